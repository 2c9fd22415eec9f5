"""The decoder treats a .dsz file as hostile: truncation, bit flips and forged headers with
valid checksums give one InputError — never another exception, a hang or a huge allocation."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepshrink.codec import container
from deepshrink.codec.container import _varint
from deepshrink.errors import InputError
from fuzz_helpers import mutate_bytes


def _sample() -> bytes:
    rng = np.random.default_rng(0)
    cb = rng.normal(size=8).astype(np.float16).astype(np.float32)
    sparse = cb[rng.integers(0, 8, 600)]
    sparse[rng.random(600) > 0.1] = 0
    blob, infos = container.encode({
        "fc.weight": sparse.reshape(20, 30), "fc.bias": cb[rng.integers(0, 8, 20)],
        "raw": rng.normal(size=5).astype(np.float32), "n": np.array(7, np.int64),
    }, source_kind="torch", source=b"pkg.mod:factory", version=2)  # the version-1 layout (test_v3_layout.py: 3)
    assert [i.encoding for i in infos] == ["sparse", "dense", "raw", "raw"]
    return blob


SAMPLE = _sample()


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(head incl. metadata, record bodies) of a valid file."""
    r = container._Reader(memoryview(blob[:-4]), "t")
    r.take(7, "head")
    n = r.varint("n", 1 << 20)
    r.varint("raw", 1 << 40)
    r.take(r.varint("z", 1 << 40), "meta")
    head = blob[:r.pos]
    bodies = []
    for _ in range(n):
        bodies.append(bytes(r.take(r.varint("len", 1 << 40), "body")))
        r.take(4, "crc")
    return head, bodies


def _frame(head: bytes, bodies: list[bytes]) -> bytes:
    """Re-assemble with every checksum recomputed, so the parser behind the CRCs is exercised."""
    blob = head + b"".join(_varint(len(b)) + b + zlib.crc32(b).to_bytes(4, "little") for b in bodies)
    return blob + zlib.crc32(blob).to_bytes(4, "little")


def _rejects(blob: bytes) -> str:
    with pytest.raises(InputError) as info:
        container.decode(blob)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_frame_helper_reproduces_the_file() -> None:
    assert _frame(*_split(SAMPLE)) == SAMPLE


def test_every_truncation_is_rejected() -> None:
    for n in range(len(SAMPLE)):
        _rejects(SAMPLE[:n])


def test_every_single_bit_flip_is_rejected() -> None:
    for i in range(len(SAMPLE)):
        for bit in range(8):
            bad = bytearray(SAMPLE)
            bad[i] ^= 1 << bit
            _rejects(bytes(bad))


def test_checksum_errors_name_the_damaged_record() -> None:
    head, bodies = _split(SAMPLE)
    bad = bytearray(SAMPLE)
    bad[len(head) + 5] ^= 1  # inside record 0's body
    assert "record 0" in _rejects(bytes(bad))


def _record(dtype: int, shape: tuple[int, ...], tail: bytes) -> bytes:
    return bytes([dtype, len(shape)]) + b"".join(_varint(d) for d in shape) + tail


@pytest.mark.parametrize(("body", "message"), [
    # raw: shape claims 2^20 floats, payload has 4 bytes; 2^40 floats are over the budget
    (_record(1, (1 << 20,), bytes([0, 1]) + b"\0" * 4), "raw payload"),
    (_record(1, (1 << 40,), bytes([0, 1]) + b"\0" * 4), "max_ratio"),
    # dense: 2^20 symbols cannot fit in a 1-byte payload (checked before allocating)
    (_record(1, (1 << 20,), bytes([1, 1]) + _varint(2) + b"\0" * 8 + bytes([0x11]) + _varint(1) + b"\0"),
     "cannot fit"),
    # sparse: 1 entry of gap width 8 cannot cover 2^20 elements
    (_record(1, (1 << 20,), bytes([2, 1]) + _varint(1) + b"\0" * 4 + bytes([8]) + _varint(1)), "cannot cover"),
    # dense with an over-subscribed Huffman table (three 1-bit codes)
    (_record(1, (4,), bytes([1, 1]) + _varint(3) + b"\0" * 12 + bytes([0x11, 0x10]) + _varint(1) + b"\0"),
     "over-subscribed"),
    # a code longer than 15 bits cannot even be written in a nibble; an incomplete table can
    (_record(1, (4,), bytes([1, 1]) + _varint(2) + b"\0" * 8 + bytes([0x12]) + _varint(1) + b"\0"), "incomplete"),
    # float16 storage of a float32 tensor is legal; here the table after the codebook is missing
    (_record(1, (4,), bytes([1, 2]) + _varint(2) + b"\0" * 4), "Huffman table needs 1 bytes"),
    (_record(99, (4,), b""), "unknown dtype"),
    (_record(1, (1,) * 9, b""), "dimensions"),
    (_record(1, (4,), bytes([7, 1])), "unknown encoding"),
    (_record(4, (4,), bytes([0, 1])), "cannot hold"),  # int64 stored as float32
    (_record(1, (3,), bytes([0, 1]) + b"\0" * 12 + b"extra"), "raw payload"),
    (_record(1, (100,), bytes([2, 1]) + _varint(1) + b"\0" * 4 + bytes([9])), "gap width"),
])
def test_forged_records_with_valid_checksums(body: bytes, message: str) -> None:
    head, bodies = _split(SAMPLE)
    assert message in _rejects(_frame(head, [body, *bodies[1:]]))


def test_forged_counts_and_lengths_in_the_header() -> None:
    head, bodies = _split(SAMPLE)
    meta_len_at = 8  # magic 4, version, flags, kind, record count (1 byte): then the metadata length
    forged = head[:7] + _varint(10**9) + head[8:]  # a billion records
    assert "record count" in _rejects(_frame(forged, bodies))
    forged = head[:meta_len_at] + _varint(1 << 29) + head[meta_len_at + 1:]  # 512 MB of "metadata"
    assert "impossible" in _rejects(_frame(forged, bodies))
    assert "version" in _rejects(SAMPLE[:4] + b"\x07" + SAMPLE[5:])
    assert "not a deepshrink" in _rejects(b"PK\x03\x04" + SAMPLE[4:])


def test_decompression_bomb_is_refused_before_allocating() -> None:
    # 2^16 sparse entries of gap width 8 may legally cover 2^24 elements (64 MiB of float32) —
    # far more than 1024x this small file: the reader's max_ratio policy refuses before allocating
    head, bodies = _split(SAMPLE)
    body = _record(1, (1 << 24,), bytes([2, 1]) + _varint(0) + bytes([8]) + _varint(1 << 16))
    assert "max_ratio" in _rejects(_frame(head, [body, *bodies[1:]]))
    out = container.decode(SAMPLE, max_ratio=1)  # the real file decodes well inside its budget
    assert sum(a.nbytes for a in out.tensors.values()) < len(SAMPLE) + (16 << 20)


def test_positions_past_the_end_are_rejected() -> None:
    # 3 elements, 2 entries with gaps 1 and 1: positions 1 and 3 (past the end)
    from deepshrink.codec import huffman

    lens = np.array([1, 1])  # gap alphabet {0, 1}, 1 bit each
    gaps = huffman.encode(np.array([1, 1]), lens)
    syms = huffman.encode(np.array([0, 0]), np.array([1, 1]))
    body = _record(1, (3,), bytes([2, 1]) + _varint(1) + b"\0\0\x80\x3f" + bytes([1]) + _varint(2)
                   + huffman.table_bytes(np.array([1, 1])) + huffman.table_bytes(lens)
                   + _varint(len(syms)) + syms + _varint(len(gaps)) + gaps)
    head, bodies = _split(SAMPLE)
    assert "past the tensor" in _rejects(_frame(head, [body, *bodies[1:]]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=st.integers(0, 3), pos=st.integers(0, 10_000), data=st.binary(min_size=0, max_size=8),
       op=st.sampled_from(["replace", "insert", "delete"]))
def test_fuzzed_records_behind_valid_checksums(record: int, pos: int, data: bytes, op: str) -> None:
    """Mutate one record body, recompute every CRC: decode must succeed or raise InputError."""
    head, bodies = _split(SAMPLE)
    b = mutate_bytes(bodies[record], pos, data, op)
    bodies[record] = b
    try:
        out = container.decode(_frame(head, bodies))
    except InputError:
        return
    assert sum(a.nbytes for a in out.tensors.values()) < 64 * len(SAMPLE)  # nothing huge came out


@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=0, max_size=64), pos=st.integers(0, 200))
def test_fuzzed_metadata_behind_valid_checksums(data: bytes, pos: int) -> None:
    """Names and the model description are deflated; forge them and re-deflate."""
    head, bodies = _split(SAMPLE)
    r = container._Reader(memoryview(head), "t")
    r.take(7, "h")
    n = r.varint("n", 1 << 20)
    raw_len = r.varint("raw", 1 << 40)
    meta = zlib.decompress(bytes(r.take(r.varint("z", 1 << 40), "m")), -15)
    assert len(meta) == raw_len
    pos %= len(meta) + 1
    meta = meta[:pos] + data + meta[pos + len(data):]
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    mz = z.compress(meta) + z.flush()
    forged = head[:7] + _varint(n) + _varint(len(meta)) + _varint(len(mz)) + mz
    try:
        container.decode(_frame(forged, bodies))
    except InputError:
        pass
