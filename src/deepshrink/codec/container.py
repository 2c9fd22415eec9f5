"""The ``.dsz`` container: tensors stored as raw bytes, dense codebook indices, sparse
codebook indices with relative position gaps, entropy-coded with canonical Huffman codes,
or (version 2) one constant value. Version 3 (written by default) moves each tensor's
dtype, shape and encoding — and a constant tensor's value — into the deflated metadata
block, so records hold only payloads.

The byte layout is documented in ``docs/FORMAT.md``; this module is its only reader and
writer. Encoding is lossless *by bit pattern*: a tensor's distinct bit patterns become its
codebook (so -0.0, NaN payloads and integers survive), and "zero" in the sparse encoding
means the all-zero bit pattern. Deep Compression (Han et al., ICLR 2016) gives the three
ideas used here: a codebook per layer, relative indices with a filler zero when a gap
overflows the gap width, and Huffman coding of both index streams.

The reader treats a file as hostile: the whole-file CRC32 and each record's CRC32 are
checked before anything is parsed from them; every length and count is bounded by the
bytes that remain before anything is allocated; Huffman tables must be complete prefix
codes with codes of at most 15 bits. Every failure is one :class:`InputError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..core.formats import DSZ_MAGIC, DSZ_SOURCE_KINDS
from ..errors import InputError
from . import huffman

MAGIC = DSZ_MAGIC
VERSION = 3  # written by default; version=2 writes the version-1/2 layout (1 when nothing is constant)
READS = (1, 2, 3)
MAX_CODEBOOK = 256  # codebook encodings hold at most 2^8 distinct values (8-bit indices)
MAX_GAP_BITS = 8
MAX_NDIM = 8
MAX_RATIO = 1024  # decoded bytes per file byte a reader accepts (plus 16 MiB)
MAX_SOURCE_RAW = 1 << 30  # 1 GiB: largest decompressed metadata (model description + names) accepted
# version 3: the metadata is deflated with this preset dictionary (docs/FORMAT.md spells it out):
# words of common PyTorch / Hugging Face state-dict names, most frequent last (shortest match distance)
META_DICT = (b"features.classifier.downsample.layer1.layer2.layer3.layer4.conv1.conv2.conv3.bn1.bn2.bn3.head.stem."
             b"blocks.norm1.norm2.attn.qkv.proj.mlp.fc1.fc2.embeddings.word_embeddings.position_embeddings."
             b"token_type_embeddings.LayerNorm.encoder.layer.attention.self.query.key.value.output.dense."
             b"intermediate.pooler.decoder.lm_head.block.conv.norm.bn.fc.num_batches_tracked.running_var."
             b"running_mean.bias.weight")

SourceKind = Literal["tensors", "torch", "onnx"]
Entropy = Literal["huffman", "fixed"]
_KINDS: dict[str, int] = DSZ_SOURCE_KINDS
ENCODINGS = ("raw", "dense", "sparse", "constant")

# dtype code -> numpy dtype; the bit view is the unsigned integer of the same width
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"), 4: np.dtype("<i8"), 5: np.dtype("<i4"),
    6: np.dtype("<i2"), 7: np.dtype("i1"), 8: np.dtype("u1"), 9: np.dtype("?"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
# narrower storage a value may use when the round trip is bit-exact
_NARROWER: dict[int, tuple[int, ...]] = {1: (2,), 3: (2, 1), 4: (7, 6, 5), 5: (7, 6), 6: (7,)}


@dataclass(frozen=True)
class RecordInfo:
    """One tensor as written: its encoding, codebook size, gap width and bytes on disk
    (the whole record: framing, name, header, tables, payload and CRC)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    nbytes: int
    codebook_size: int = 0
    gap_bits: int = 0
    entries: int = 0


@dataclass
class Container:
    """A decoded file: the source description and the tensors (numpy, original dtype/shape)."""

    source_kind: SourceKind
    source: bytes
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    records: list[RecordInfo] = field(default_factory=list)


# -- small binary helpers ---------------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be >= 0")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Reader:
    """Bounds-checked cursor over a memoryview; ``what`` names the part for error messages."""

    def __init__(self, buf: memoryview, what: str) -> None:
        self.buf, self.pos, self.what = buf, 0, what

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, part: str) -> memoryview:
        if n < 0 or n > self.remaining():
            raise InputError(f"{self.what}: {part} needs {n} bytes but only {self.remaining()} remain (truncated or forged)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, part: str) -> int:
        return int(self.take(1, part)[0])

    def varint(self, part: str, limit: int) -> int:
        n, shift = 0, 0
        for _ in range(10):
            b = self.u8(part)
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n > limit:
                    raise InputError(f"{self.what}: {part} = {n} exceeds its bound {limit} (forged or corrupt)")
                return n
            shift += 7
        raise InputError(f"{self.what}: {part} is not a valid varint")


def supported(dtype: np.dtype) -> bool:
    """Whether tensors of ``dtype`` can be stored (float16/32/64, int8–64, uint8, bool)."""
    try:
        return np.dtype(dtype).newbyteorder("<") in _CODES or np.dtype(dtype) in _CODES
    except TypeError:
        return False


def _bits_view(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.dtype(f"<u{a.dtype.itemsize}") if a.dtype.itemsize > 1 else np.uint8)


def _narrowest(values: np.ndarray, code: int) -> int:
    """The narrowest storage dtype code holding ``values`` bit-exactly."""
    bits = _bits_view(values)
    for cand in _NARROWER.get(code, ()):
        with np.errstate(all="ignore"):
            back = values.astype(_DTYPES[cand]).astype(values.dtype)
        if np.array_equal(_bits_view(back), bits):
            return cand
    return code


# -- encoding ---------------------------------------------------------------------------
def _unique(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(bits, return_inverse=True)``, fast when a few values repeat (a shared-weight
    tensor): the distinct values of a sample, plus any value it missed, are looked up with
    ``searchsorted`` (O(N log K)); more than 256 distinct values fall back to the full sort."""
    if bits.size > 1 << 16:
        cand = np.unique(bits[:: max(1, bits.size >> 16)])
        for _ in range(2):
            if len(cand) > MAX_CODEBOOK:
                break
            idx = np.searchsorted(cand, bits)
            np.minimum(idx, len(cand) - 1, out=idx)
            miss = cand[idx] != bits
            if not miss.any():
                return cand, idx
            cand = np.union1d(cand, bits[miss])
    return np.unique(bits, return_inverse=True) if bits.size else (bits, bits)


def _codebook_bytes(values: np.ndarray, code: int) -> tuple[bytes, int]:
    store = _narrowest(values, code)
    return values.astype(_DTYPES[store]).tobytes(), store


def _sparse_entries(nz: np.ndarray, sym: np.ndarray, numel: int, k: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap and symbol streams with filler zeros (symbol ``k``) wherever a run of zeros
    exceeds ``2^w - 1``, including the trailing run (so numel ≤ (entries + 1) · 2^w)."""
    g1 = 1 << w
    gaps = np.diff(nz, prepend=-1) - 1
    q, r = np.divmod(gaps, g1)
    trailing = numel - 1 - int(nz[-1]) if len(nz) else numel
    n_entries = len(nz) + int(q.sum()) + trailing // g1
    g_out = np.full(n_entries, g1 - 1, dtype=np.int64)
    s_out = np.full(n_entries, k, dtype=np.int64)
    at = np.arange(len(nz)) + np.cumsum(q)
    g_out[at] = r
    s_out[at] = sym
    return g_out, s_out


def _encode_tensor(name: str, arr: np.ndarray, *, entropy: Entropy, gap_bits: int | None,
                   force: str | None, version: int) -> tuple[bytes, bytes, RecordInfo]:
    """(head: dtype, ndim, dims, encoding, storage dtype; the encoding's fields; its info
    with ``nbytes`` 0 — the caller frames it). In version 3 a constant tensor is always
    stored as its value (it needs no record); before, a one-element tensor stays raw (a tie)
    so that files without other constants remain readable by version-1 readers."""
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise InputError(f"tensor {name!r}: dtype {arr.dtype} cannot be packed (supported: "
                         f"{', '.join(sorted(str(d) for d in _CODES))})")
    if arr.ndim > MAX_NDIM:
        raise InputError(f"tensor {name!r}: {arr.ndim} dimensions (at most {MAX_NDIM})")
    arr = np.asarray(arr, dtype=dtype, order="C")
    head = bytes([code, arr.ndim]) + b"".join(_varint(d) for d in arr.shape)
    numel = arr.size
    bits = _bits_view(arr)
    fixed = entropy == "fixed"
    candidates: dict[str, tuple[int, object]] = {}

    store = _narrowest(arr, code)
    candidates["raw"] = (numel * _DTYPES[store].itemsize, store)
    uniq, inv = _unique(bits)
    if len(uniq) == 1 and numel:  # every element the same bit pattern: one value, nothing per element
        cb, cb_store = _codebook_bytes(uniq.view(dtype), code)
        candidates["constant"] = (len(cb), (cb, cb_store))
    if 0 < len(uniq) <= MAX_CODEBOOK:
        vals = uniq.view(dtype)
        cb, cb_store = _codebook_bytes(vals, code)
        freq = np.bincount(inv, minlength=len(uniq))
        lens = huffman.code_lengths(freq, fixed=fixed)
        size = len(cb) + len(huffman.table_bytes(lens)) + (huffman.encoded_bits(freq, lens) + 7) // 8 + 4
        candidates["dense"] = (size, (vals, inv, lens, cb, cb_store))
    # sparse only pays off when most elements are zero (each entry costs a gap and an index)
    n_zero = int(np.count_nonzero(inv == 0)) if numel and uniq[0] == 0 else 0  # uniq is sorted: zero first
    if n_zero * 2 > numel:
        nz_vals = uniq[1:]
        if len(nz_vals) <= MAX_CODEBOOK:
            nz = np.flatnonzero(bits)
            sym = inv[nz] - 1
            k = len(nz_vals)
            cb, cb_store = _codebook_bytes(nz_vals.view(dtype), code) if k else (b"", code)
            best = None
            for w in ([gap_bits] if gap_bits else range(1, MAX_GAP_BITS + 1)):
                g, s = _sparse_entries(nz, sym, numel, k, w)
                fg, fs = np.bincount(g, minlength=1 << w), np.bincount(s, minlength=k + 1)
                lg, ls = huffman.code_lengths(fg, fixed=fixed), huffman.code_lengths(fs, fixed=fixed)
                size = (len(cb) + len(huffman.table_bytes(lg)) + len(huffman.table_bytes(ls)) + 12
                        + (huffman.encoded_bits(fg, lg) + 7) // 8 + (huffman.encoded_bits(fs, ls) + 7) // 8)
                if best is None or size < best[0]:
                    best = (size, (k, cb, cb_store, w, g, s, lg, ls))
            assert best is not None
            candidates["sparse"] = best
    if force is not None:
        if force not in candidates:
            raise InputError(f"tensor {name!r}: encoding {force!r} is not possible for it "
                             f"(possible: {', '.join(candidates)})")
        choice = force
    elif version >= 3 and "constant" in candidates:
        choice = "constant"
    else:
        choice = min(candidates, key=lambda c: candidates[c][0])
    info: dict[str, int] = {}
    if choice == "raw":
        store = candidates["raw"][1]
        tag, fields = bytes([0, store]), arr.reshape(-1).astype(_DTYPES[store]).tobytes()  # type: ignore[index]
    elif choice == "constant":
        cb, cb_store = candidates["constant"][1]  # type: ignore[misc]
        tag, fields = bytes([3, cb_store]), cb
    elif choice == "dense":
        vals, inv, lens, cb, cb_store = candidates["dense"][1]  # type: ignore[misc]
        payload = huffman.encode(inv, lens)
        tag = bytes([1, cb_store])
        fields = _varint(len(vals)) + cb + huffman.table_bytes(lens) + _varint(len(payload)) + payload
        info = {"codebook_size": len(vals)}
    else:
        k, cb, cb_store, w, g, s, lg, ls = candidates["sparse"][1]  # type: ignore[misc]
        pg, ps = huffman.encode(g, lg), huffman.encode(s, ls)
        tag = bytes([2, cb_store])
        fields = (_varint(k) + cb + bytes([w]) + _varint(len(g)) + huffman.table_bytes(ls) + huffman.table_bytes(lg)
                  + _varint(len(ps)) + ps + _varint(len(pg)) + pg)
        info = {"codebook_size": k, "gap_bits": w, "entries": len(g)}
    return head + tag, fields, RecordInfo(name, str(np.dtype(dtype)), tuple(arr.shape), choice, 0, **info)


def _frame(body: bytes) -> bytes:
    return _varint(len(body)) + body + zlib.crc32(body).to_bytes(4, "little")


def encode(tensors: Mapping[str, np.ndarray], *, source_kind: SourceKind = "tensors", source: bytes = b"",
           entropy: Entropy = "huffman", gap_bits: int | None = None,
           force: Mapping[str, str] | None = None, version: int = VERSION) -> tuple[bytes, list[RecordInfo]]:
    """Serialise ``tensors`` (name → numpy array) into ``.dsz`` bytes.

    Per tensor the smallest of raw / dense codebook / sparse codebook / constant is written (or
    ``force[name]``). ``entropy="fixed"`` writes fixed-length codes instead of Huffman
    codes (the "quantized, not entropy-coded" stage). ``gap_bits`` fixes the sparse gap
    width (1–8 bits; default: the best per tensor). ``source`` is the factory string
    (``"torch"``) or the weight-stripped ONNX graph (``"onnx"``); it is deflated together
    with the tensor names (version 3: and each tensor's dtype, shape, encoding and constant
    value) into the metadata block. ``version``: 3 (default), or 2 for the older layout that
    version-1/2 readers read (written as version 1 when no tensor is constant). A constant
    tensor's ``RecordInfo.nbytes`` is 0 in version 3: it lives in the metadata block.
    Raises :class:`InputError` for an unsupported dtype, an impossible forced encoding or
    an unknown version.
    """
    if source_kind not in _KINDS:
        raise InputError(f"unknown source kind {source_kind!r}; use {', '.join(_KINDS)}")
    if gap_bits is not None and not 1 <= gap_bits <= MAX_GAP_BITS:
        raise InputError(f"gap_bits {gap_bits}: use 1..{MAX_GAP_BITS}")
    if version not in (2, 3):
        raise InputError(f"version {version}: write 3, or 2 for version-1/2 readers")
    entries, out, infos = [], [], []
    for name, arr in tensors.items():
        head, fields, info = _encode_tensor(name, np.asarray(arr), entropy=entropy, gap_bits=gap_bits,
                                            force=(force or {}).get(name), version=version)
        key = _varint(len(name.encode("utf-8"))) + name.encode("utf-8")
        if version == 3:
            constant = info.encoding == "constant"
            entries.append(key + head + (fields if constant else b""))
            rec = b"" if constant else _frame(fields)
        else:
            entries.append(key)
            rec = _frame(head + fields)
        out.append(rec)
        infos.append(RecordInfo(**{**info.__dict__, "nbytes": len(rec)}))
    if version == 2:  # version-1 readers read a file without constants
        version = 2 if any(i.encoding == "constant" for i in infos) else 1
    meta = _varint(len(source)) + source + b"".join(entries)
    # raw deflate (the file's CRC32 guards it); version 3 with the preset dictionary of common names
    packed = (zlib.compressobj(9, zlib.DEFLATED, -15, zdict=META_DICT) if version == 3
              else zlib.compressobj(9, zlib.DEFLATED, -15))
    meta_z = packed.compress(meta) + packed.flush()
    blob = b"".join([MAGIC, bytes([version, 0, _KINDS[source_kind]]), _varint(len(tensors)), _varint(len(meta)),
                     _varint(len(meta_z)), meta_z, *out])
    return blob + zlib.crc32(blob).to_bytes(4, "little"), infos


# -- decoding ---------------------------------------------------------------------------
def _table(r: _Reader, alphabet: int, what: str) -> np.ndarray:
    lens = huffman.table_from_bytes(r.take((alphabet + 1) // 2, f"{what} Huffman table"), alphabet)
    huffman.check_lengths(lens, what=f"{r.what}: {what}")
    return lens


@dataclass(frozen=True)
class _Head:
    code: int
    shape: tuple[int, ...]
    numel: int
    enc: int
    store: int


def _parse_head(r: _Reader, where: str, budget: int, version: int) -> _Head:
    """dtype, ndim, dims, encoding, storage dtype — checked, and the shape bounded by
    ``budget`` (bytes the reader still allows) before anything is allocated."""
    code = r.u8("dtype")
    if code not in _DTYPES:
        raise InputError(f"{where}: unknown dtype code {code}")
    dtype = _DTYPES[code]
    ndim = r.u8("ndim")
    if ndim > MAX_NDIM:
        raise InputError(f"{where}: {ndim} dimensions (at most {MAX_NDIM})")
    shape = tuple(r.varint("dimension", 1 << 40) for _ in range(ndim))
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if numel * dtype.itemsize > budget:
        raise InputError(f"{where}: shape {list(shape)} would decode to {numel * dtype.itemsize:,} bytes, over the "
                         f"{budget:,} bytes left for this file (max_ratio)")
    enc = r.u8("encoding")
    if enc > 3 or (enc == 3 and version < 2):
        raise InputError(f"{where}: unknown encoding {enc}")
    store = r.u8("storage dtype")
    if store != code and store not in _NARROWER.get(code, ()):
        raise InputError(f"{where}: storage dtype code {store} cannot hold a {dtype} tensor")
    return _Head(code, shape, numel, enc, store)


def _decode_fields(r: _Reader, h: _Head, name: str, where: str) -> tuple[np.ndarray, RecordInfo]:
    """The encoding's fields (the rest of ``r``: nothing may follow them) into the tensor."""
    dtype, sdt, numel, shape = _DTYPES[h.code], _DTYPES[h.store], h.numel, h.shape
    info: dict[str, int] = {}
    if h.enc == 0:  # raw
        if numel * sdt.itemsize != r.remaining():
            raise InputError(f"{where}: raw payload is {r.remaining()} bytes, shape {shape} needs "
                             f"{numel * sdt.itemsize}")
        arr = np.frombuffer(r.take(r.remaining(), "payload"), dtype=sdt).astype(dtype)
    elif h.enc in (1, 2):
        k = r.varint("codebook size", MAX_CODEBOOK)
        if h.enc == 1 and k == 0 and numel:
            raise InputError(f"{where}: empty codebook for a non-empty tensor")
        cb = np.frombuffer(r.take(k * sdt.itemsize, "codebook"), dtype=sdt).astype(dtype)
        if h.enc == 1:
            lens = _table(r, k, "index")
            payload = r.take(r.varint("payload length", r.remaining()), "index payload")
            idx = huffman.decode(payload, lens, numel, what=f"{where} indices")
            arr = cb[idx]
            info = {"codebook_size": k}
        else:
            w = r.u8("gap width")
            if not 1 <= w <= MAX_GAP_BITS:
                raise InputError(f"{where}: gap width {w} bits (allowed 1..{MAX_GAP_BITS})")
            n_entries = r.varint("entry count", 8 * r.remaining())
            if numel > (n_entries + 1) << w:
                raise InputError(f"{where}: {n_entries} entries of gap width {w} cannot cover {numel} elements")
            ls = _table(r, k + 1, "index")
            lg = _table(r, 1 << w, "gap")
            ps = r.take(r.varint("index payload length", r.remaining()), "index payload")
            pg = r.take(r.varint("gap payload length", r.remaining()), "gap payload")
            syms = huffman.decode(ps, ls, n_entries, what=f"{where} indices")
            gaps = huffman.decode(pg, lg, n_entries, what=f"{where} gaps")
            pos = np.cumsum(gaps + 1) - 1
            if n_entries and int(pos[-1]) >= numel:
                raise InputError(f"{where}: sparse positions run past the tensor's {numel} elements")
            arr = np.zeros(numel, dtype=dtype)
            arr[pos] = np.concatenate([cb, np.zeros(1, dtype=dtype)])[syms]
            info = {"codebook_size": k, "gap_bits": w, "entries": n_entries}
    else:  # constant (checked by _parse_head: version >= 2)
        if numel == 0:
            raise InputError(f"{where}: constant encoding for an empty tensor")
        value = np.frombuffer(r.take(sdt.itemsize, "constant value"), dtype=sdt).astype(dtype)
        arr = np.full(numel, value[0], dtype=dtype)
    if r.remaining():
        raise InputError(f"{where}: {r.remaining()} unexpected bytes after the payload")
    return arr.reshape(shape), RecordInfo(name, str(dtype), shape, ENCODINGS[h.enc], 0, **info)


def _decode_record(body: memoryview, name: str, where: str, budget: int,
                   version: int = VERSION) -> tuple[np.ndarray, RecordInfo]:
    """A version-1/2 record body: head, then the encoding's fields."""
    r = _Reader(body, where)
    return _decode_fields(r, _parse_head(r, where, budget, version), name, where)


def decode(data: bytes | bytearray | memoryview, *, what: str = "file", max_ratio: int = MAX_RATIO) -> Container:
    """Parse ``.dsz`` bytes. Raises :class:`InputError` (one line naming ``what`` and the
    damaged part) for a wrong magic/version, a checksum mismatch, any forged length, or
    tensors that would decode to more than ``max_ratio`` × the file size + 16 MiB (a
    reader's policy against decompression bombs; the format itself allows about 16,000×)."""
    buf = memoryview(bytes(data) if not isinstance(data, bytes) else data)
    budget = max_ratio * len(buf) + (16 << 20)
    if len(buf) < len(MAGIC) + 3 + 4 or bytes(buf[:4]) != MAGIC:
        raise InputError(f"{what} is not a deepshrink .dsz file (bad magic or too short)")
    version = buf[4]
    if version not in READS:
        raise InputError(f"{what}: .dsz version {version} is not supported (this reader reads versions "
                         f"{', '.join(map(str, READS))})")
    stored = int.from_bytes(buf[-4:], "little")
    if zlib.crc32(buf[:-4]) != stored:
        raise InputError(f"{what} is damaged: whole-file CRC32 mismatch{_first_bad_record(buf, what)}")
    r = _Reader(buf[:-4], what)
    r.take(5, "magic+version")
    if r.u8("flags") != 0:
        raise InputError(f"{what}: unknown flags (written by a newer deepshrink?)")
    kind_code = r.u8("source kind")
    kinds = {v: k for k, v in _KINDS.items()}
    if kind_code not in kinds:
        raise InputError(f"{what}: unknown source kind {kind_code}")
    # v1/2: every tensor is a record of at least 6 bytes; v3: at least 5 bytes of metadata (inflated)
    n = r.varint("record count", r.remaining() // 6 if version < 3 else MAX_SOURCE_RAW // 5)
    raw_len = r.varint("metadata length", MAX_SOURCE_RAW)
    meta_z = r.take(r.varint("compressed metadata length", r.remaining()), "metadata")
    if raw_len > 1100 * len(meta_z) + 64:  # beyond deflate's largest ratio (about 1032:1)
        raise InputError(f"{what}: metadata length {raw_len} is impossible for {len(meta_z)} compressed bytes")
    d = zlib.decompressobj(-15, zdict=META_DICT) if version >= 3 else zlib.decompressobj(-15)
    try:
        meta = d.decompress(bytes(meta_z), raw_len + 1)
    except zlib.error as exc:
        raise InputError(f"{what}: metadata cannot be decompressed ({exc})") from None
    if len(meta) != raw_len or not d.eof:
        raise InputError(f"{what}: metadata decompresses to the wrong length")
    m = _Reader(memoryview(meta), f"{what}: metadata")
    source = bytes(m.take(m.varint("source length", m.remaining()), "source"))
    names, heads, consts = [], [], {}
    for i in range(n):
        try:
            names.append(bytes(m.take(m.varint(f"name {i} length", m.remaining()), f"name {i}")).decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{what}: tensor name {i} is not UTF-8") from None
        if version >= 3:  # the tensor's head (and a constant's value) follows its name
            where = f"{what}: tensor {i} ({names[-1]!r})"
            h = _parse_head(m, where, budget, version)
            budget -= h.numel * _DTYPES[h.code].itemsize  # every shape bounded before anything is allocated
            heads.append(h)
            if h.enc == 3:
                consts[i] = _Reader(m.take(_DTYPES[h.store].itemsize, f"tensor {i} constant value"), where)
    if m.remaining():
        raise InputError(f"{what}: {m.remaining()} unexpected bytes after the tensor names")
    if len(set(names)) != len(names):
        raise InputError(f"{what}: a tensor name appears twice")
    out = Container(kinds[kind_code], source)  # type: ignore[arg-type]
    for i, name in enumerate(names):
        start = r.pos
        if i in consts:
            arr, info = _decode_fields(consts[i], heads[i], name, f"{what}: tensor {i} ({name!r})")
            out.tensors[name] = arr
            out.records.append(info)
            continue
        body = r.take(r.varint(f"record {i} length", r.remaining()), f"record {i}")
        crc = int.from_bytes(r.take(4, f"record {i} CRC32"), "little")
        if zlib.crc32(body) != crc:
            raise InputError(f"{what}: record {i} ({name!r}) fails its CRC32")
        where = f"{what}: record {i} ({name!r})"
        if version >= 3:
            arr, info = _decode_fields(_Reader(body, where), heads[i], name, where)
        else:
            arr, info = _decode_record(body, name, where, budget, version)
            budget -= arr.nbytes
        out.tensors[name] = arr
        out.records.append(RecordInfo(**{**info.__dict__, "nbytes": r.pos - start}))
    if r.remaining():
        raise InputError(f"{what}: {r.remaining()} unexpected bytes after the last record")
    return out


def _first_bad_record(buf: memoryview, what: str) -> str:
    """Best effort: name the first record whose own CRC fails (for the error message)."""
    try:
        r = _Reader(buf[:-4], what)
        r.take(7, "head")
        r.varint("count", 1 << 62)  # version 3: constant tensors have no record, so read records to the end
        r.varint("raw", 1 << 62)
        r.take(r.varint("metadata length", r.remaining()), "metadata")
        i = 0
        while r.remaining():
            body = r.take(r.varint("len", r.remaining()), "body")
            if zlib.crc32(body) != int.from_bytes(r.take(4, "crc"), "little"):
                return f" (record {i} fails its own CRC32)" if buf[4] < 3 else f" (stored record {i} fails its CRC32)"
            i += 1
    except InputError:
        return " (the header or a record length is damaged)"
    return ""
