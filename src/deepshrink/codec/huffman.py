"""Canonical Huffman codes for small alphabets (≤ 65,536 symbols), limited to 15-bit codes.

Huffman, "A Method for the Construction of Minimum-Redundancy Codes" (1952); canonical
codes as in DEFLATE (RFC 1951 §3.2.2), so a table is just one code length per symbol.
Deep Compression (Han et al., ICLR 2016, §4) Huffman-codes the cluster indices and the
relative index gaps of sparse weights; this module does both.

Why not entirely by hand: the bit-level work runs in ``bitarray`` (a maintained C
extension): ``bitarray.util.canonical_huffman`` builds the code lengths,
``bitarray.encode`` writes the codes and ``bitarray.util.canonical_decode`` reads them,
each in C, so MiniLM's 22 M indices take about a second each way. What is written here
is only what bitarray does not do: limiting code lengths to 15 bits (so a table fits in
4-bit nibbles), the canonical assignment from lengths, the table's byte layout, and the
validation a hostile file needs (lengths ≤ 15, a complete prefix code, enough bits).
"""

from __future__ import annotations

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman

from ..errors import InputError

MAX_LEN = 15  # longest code; lengths are stored in 4-bit nibbles (0 = symbol unused)
MAX_ALPHABET = 1 << 16
_CHUNK = 1 << 20  # symbols encoded per bitarray.encode call (bounds the Python list's memory)


def code_lengths(freq: np.ndarray, *, fixed: bool = False) -> np.ndarray:
    """Code length (bits, 0 = unused) per symbol for counts ``freq`` (int, shape ``(A,)``).

    ``fixed=True`` ignores the counts: ``n`` used symbols get ``L = ceil(log2 n)`` bits, except
    ``2^L - n`` of them get ``L - 1`` (truncated binary, so the code stays complete) — the
    no-entropy-coding baseline in the same format. Huffman lengths are limited
    to :data:`MAX_LEN` by halving the counts (keeping them ≥ 1) until they fit.
    """
    freq = np.asarray(freq, dtype=np.int64)
    used = np.flatnonzero(freq > 0)
    lengths = np.zeros(len(freq), dtype=np.int64)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    if fixed:
        n_bits = int(np.ceil(np.log2(len(used))))
        lengths[used] = n_bits
        lengths[used[: (1 << n_bits) - len(used)]] = n_bits - 1
        return lengths
    f = freq[used]
    while True:
        codes, _, _ = canonical_huffman({int(s): int(c) for s, c in zip(used, f, strict=True)})
        ls = np.array([len(codes[int(s)]) for s in used], dtype=np.int64)
        if ls.max() <= MAX_LEN:
            lengths[used] = ls
            return lengths
        f = f // 2 + 1  # flatten the distribution; converges since equal counts give log2(n) ≤ 15 bits


def _canonical_order(lengths: np.ndarray) -> tuple[list[int], list[int]]:
    """``count[l]`` (codes of length l) and the symbols sorted by (length, symbol)."""
    used = np.flatnonzero(lengths > 0)
    order = used[np.lexsort((used, lengths[used]))]
    count = np.bincount(lengths[used], minlength=MAX_LEN + 1).tolist() if len(used) else [0] * (MAX_LEN + 1)
    return count, order.tolist()


def codebook(lengths: np.ndarray) -> dict[int, frozenbitarray]:
    """The canonical code of each used symbol (DEFLATE's assignment)."""
    count, symbols = _canonical_order(lengths)
    out: dict[int, frozenbitarray] = {}
    code, k = 0, 0
    for length in range(1, MAX_LEN + 1):
        for _ in range(count[length]):
            out[symbols[k]] = frozenbitarray(format(code, f"0{length}b"))
            code += 1
            k += 1
        code <<= 1
    return out


def encoded_bits(freq: np.ndarray, lengths: np.ndarray) -> int:
    """Payload size in bits of symbols with counts ``freq`` under ``lengths``."""
    return int(np.dot(np.asarray(freq, dtype=np.int64), lengths[: len(freq)]))


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Huffman-code ``symbols`` (ints < len(lengths)) → bytes, the last byte zero-padded."""
    table = codebook(lengths)
    bits = bitarray(endian="big")
    flat = np.asarray(symbols).reshape(-1)
    for i in range(0, len(flat), _CHUNK):
        bits.encode(table, flat[i:i + _CHUNK].tolist())
    return bits.tobytes()


def decode(payload: bytes | memoryview, lengths: np.ndarray, n: int, *, what: str) -> np.ndarray:
    """Decode exactly ``n`` symbols (int64, shape ``(n,)``) from ``payload``.

    Raises :class:`InputError` (naming ``what``) if the stream ends early or holds a bit
    sequence that is no code. ``lengths`` must have passed :func:`check_lengths`.
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n > 8 * len(payload):  # every code is at least one bit
        raise InputError(f"{what}: {n} symbols cannot fit in {len(payload)} bytes")
    count, symbols = _canonical_order(lengths)
    bits = bitarray(endian="big")
    bits.frombytes(bytes(payload))
    try:
        return np.fromiter(canonical_decode(bits, count, symbols), dtype=np.int64, count=n)
    except ValueError as exc:
        raise InputError(f"{what}: Huffman stream is corrupt ({exc})") from None


def check_lengths(lengths: np.ndarray, *, what: str) -> None:
    """A table read from a file must be a complete prefix code with codes ≤ 15 bits
    (or a single 1-bit code for a one-symbol alphabet)."""
    if len(lengths) and int(lengths.max()) > MAX_LEN:
        raise InputError(f"{what}: Huffman code longer than {MAX_LEN} bits")
    used = lengths[lengths > 0]
    if len(used) == 0:
        return
    if len(used) == 1:
        if int(used[0]) != 1:
            raise InputError(f"{what}: a one-symbol Huffman table must use a 1-bit code")
        return
    kraft = sum(1 << (MAX_LEN - int(v)) for v in used)
    if kraft != 1 << MAX_LEN:
        state = "over-subscribed (not a prefix code)" if kraft > 1 << MAX_LEN else "incomplete"
        raise InputError(f"{what}: Huffman table is {state}")


def table_bytes(lengths: np.ndarray) -> bytes:
    """Lengths as 4-bit nibbles, high nibble first; an odd count ends with a 0 nibble."""
    ls = np.asarray(lengths, dtype=np.uint8)
    if len(ls) % 2:
        ls = np.append(ls, np.uint8(0))
    return ((ls[0::2] << 4) | ls[1::2]).astype(np.uint8).tobytes()


def table_from_bytes(raw: bytes | memoryview, alphabet: int) -> np.ndarray:
    """Inverse of :func:`table_bytes` for an alphabet of ``alphabet`` symbols."""
    b = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty(2 * len(b), dtype=np.int64)
    out[0::2] = b >> 4
    out[1::2] = b & 15
    return out[:alphabet]
