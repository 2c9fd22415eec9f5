""".dsz version 3: each tensor's dtype, shape and encoding (and a constant tensor's value) live in
the deflated metadata block, records hold only payloads. Bit-exact like versions 1/2 (which stay
readable), smaller, and hostile-input-safe: forged metadata behind valid checksums, truncations,
bit flips and fuzzed bytes give one InputError."""

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

from .test_hostile import _rejects


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cb = rng.normal(size=8).astype(np.float16).astype(np.float32)
    sparse = cb[rng.integers(0, 8, 600)]
    sparse[rng.random(600) > 0.1] = 0
    return {"conv.weight": sparse.reshape(20, 30), "bn.weight": np.ones(32, np.float32),
            "bn.bias": cb[rng.integers(0, 8, 32)], "bn.running_mean": np.zeros(32, np.float32),
            "bn.num_batches_tracked": np.array(1234, np.int64), "raw": rng.normal(size=5).astype(np.float32),
            "empty": np.zeros((0, 3), np.float32), "neg0": np.full((3,), -0.0, np.float32)}


def test_round_trip_is_bit_exact_and_smaller_than_version_2() -> None:
    t = _tensors()
    v3, infos = container.encode(t, source_kind="torch", source=b"pkg.mod:factory")
    v2, _ = container.encode(t, source_kind="torch", source=b"pkg.mod:factory", version=2)
    assert (v3[4], v2[4]) == (3, 2)
    for blob in (v3, v2):  # the older layout stays readable
        out = container.decode(blob)
        for name, a in t.items():
            b = out.tensors[name]
            assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes(), name
    enc = {i.name: i.encoding for i in infos}
    assert enc == {"conv.weight": "sparse", "bn.weight": "constant", "bn.bias": "dense", "bn.running_mean": "constant",
                   "bn.num_batches_tracked": "constant", "raw": "raw", "empty": "raw", "neg0": "constant"}
    # constants have no record (0 bytes); the 4 others: length, payload, CRC32 — no dtype/shape/encoding bytes
    assert [i.nbytes for i in infos if i.encoding == "constant"] == [0, 0, 0, 0]
    assert {i.name: i.nbytes for i in infos}["raw"] == 1 + 5 * 4 + 4
    # measured on this sample: 331 → 305 bytes (constants and heads move into the deflated metadata)
    assert len(v2) - len(v3) >= 20
    assert [r.nbytes for r in container.decode(v3).records] == [i.nbytes for i in infos]


def test_every_truncation_and_bit_flip_is_rejected() -> None:
    blob, _ = container.encode({"c": np.ones(32, np.float32), "w": np.arange(6, dtype=np.float32),
                                "n": np.array(3, np.int64)}, source_kind="torch", source=b"pkg.mod:f")
    assert blob[4] == 3
    for n in range(len(blob)):
        _rejects(blob[:n])
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            _rejects(bytes(bad))


def _entry(name: str, dtype: int, shape: tuple[int, ...], enc: int, store: int, value: bytes = b"") -> bytes:
    return (_varint(len(name)) + name.encode() + bytes([dtype, len(shape)]) + b"".join(_varint(d) for d in shape)
            + bytes([enc, store]) + value)


def _file(entries: list[bytes], bodies: list[bytes], n: int | None = None, tail: bytes = b"") -> bytes:
    """A version-3 file with every checksum valid, so the parser behind them is exercised."""
    src = b"pkg.mod:f"
    meta = _varint(len(src)) + src + b"".join(entries) + tail
    z = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=container.META_DICT)
    mz = z.compress(meta) + z.flush()
    blob = (container.MAGIC + bytes([3, 0, 1]) + _varint(len(entries) if n is None else n) + _varint(len(meta))
            + _varint(len(mz)) + mz
            + b"".join(_varint(len(b)) + b + zlib.crc32(b).to_bytes(4, "little") for b in bodies))
    return blob + zlib.crc32(blob).to_bytes(4, "little")


ONE = b"\x00\x3c"  # float16 1.0
RAW4 = b"\0" * 16  # 4 float32 zeros


def test_hand_built_file_decodes() -> None:  # the helper writes what the reader expects
    out = container.decode(_file([_entry("c", 1, (4,), 3, 2, ONE), _entry("r", 1, (4,), 0, 1)], [RAW4]))
    assert out.tensors["c"].tolist() == [1.0] * 4 and out.tensors["r"].tolist() == [0.0] * 4


@pytest.mark.parametrize(("entries", "bodies", "message"), [
    ([_entry("c", 99, (4,), 3, 2, ONE)], [], "unknown dtype"),
    ([_entry("c", 1, (1,) * 9, 3, 2, ONE)], [], "dimensions"),
    ([_entry("c", 1, (4,), 4, 1)], [RAW4], "unknown encoding 4"),
    ([_entry("c", 1, (0,), 3, 2, ONE)], [], "empty tensor"),
    ([_entry("c", 1, (4,), 3, 7, b"\0")], [], "cannot hold"),  # float32 stored as int8
    ([_entry("c", 1, (4,), 3, 1, b"\0\0")], [], "constant value needs 4 bytes"),
    ([_entry("c", 1, (4,), 3, 2, ONE + b"\0")], [], "unexpected bytes after the tensor names"),
    # a constant of 2^40 float32 and a raw tensor of 2^40: refused from the shape, before allocating
    ([_entry("c", 1, (1 << 40,), 3, 2, ONE)], [], "max_ratio"),
    ([_entry("r", 1, (1 << 40,), 0, 1)], [RAW4], "max_ratio"),
    # many modest constants: the budget is spent across tensors, still before anything is allocated
    ([_entry(f"c{i}", 1, (1 << 22,), 3, 2, ONE) for i in range(8)], [], "max_ratio"),
    ([_entry("r", 1, (4,), 0, 1)], [], "record 0 length"),  # a stored tensor without its record
    ([_entry("r", 1, (4,), 0, 1)], [RAW4, RAW4], "after the last record"),
    ([_entry("r", 1, (4,), 0, 1)], [b"\0" * 12], "raw payload"),
    ([_entry("a", 1, (4,), 3, 2, ONE), _entry("a", 1, (4,), 3, 2, ONE)], [], "appears twice"),
])
def test_forged_metadata_behind_valid_checksums(entries: list[bytes], bodies: list[bytes], message: str) -> None:
    assert message in _rejects(_file(entries, bodies))


def test_forged_tensor_count() -> None:
    e = [_entry("c", 1, (4,), 3, 2, ONE)]
    assert "name 1 length" in _rejects(_file(e, [], n=2))  # more tensors than the metadata holds
    assert "record count" in _rejects(_file(e, [], n=1 << 40))


def _parts(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(inflated metadata, record bodies) of a valid version-3 file."""
    r = container._Reader(memoryview(blob[:-4]), "t")
    r.take(7, "head")
    r.varint("n", 1 << 40)
    r.varint("raw", 1 << 40)
    d = zlib.decompressobj(-15, zdict=container.META_DICT)
    meta = d.decompress(bytes(r.take(r.varint("z", 1 << 40), "m")))
    bodies = []
    while r.remaining():
        bodies.append(bytes(r.take(r.varint("len", 1 << 40), "body")))
        r.take(4, "crc")
    return meta, bodies


SAMPLE3, _ = container.encode(_tensors(), source_kind="torch", source=b"pkg.mod:factory")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(part=st.integers(-1, 3), pos=st.integers(0, 10_000), data=st.binary(min_size=0, max_size=8),
       op=st.sampled_from(["replace", "insert", "delete"]))
def test_fuzzed_metadata_and_records_behind_valid_checksums(part: int, pos: int, data: bytes, op: str) -> None:
    """Mutate the metadata (part -1) or one record, re-deflate and recompute every CRC: decode
    must succeed or raise InputError, and never produce anything large."""
    meta, bodies = _parts(SAMPLE3)
    b = mutate_bytes(meta if part < 0 else bodies[part], pos, data, op)
    if part < 0:
        meta = b
    else:
        bodies[part] = b
    z = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=container.META_DICT)
    mz = z.compress(meta) + z.flush()
    blob = (SAMPLE3[:7] + _varint(len(_tensors())) + _varint(len(meta)) + _varint(len(mz)) + mz
            + b"".join(_varint(len(x)) + x + zlib.crc32(x).to_bytes(4, "little") for x in bodies))
    blob += zlib.crc32(blob).to_bytes(4, "little")
    try:
        out = container.decode(blob)
    except InputError:
        return
    assert sum(a.nbytes for a in out.tensors.values()) < (16 << 20) + 1024 * len(blob)


def test_unknown_version_and_writer_version() -> None:
    assert "version 4" in _rejects(SAMPLE3[:4] + b"\x04" + SAMPLE3[5:])
    with pytest.raises(InputError, match="version 1"):
        container.encode({"x": np.ones(3, np.float32)}, version=1)


def test_preset_dictionary_is_the_one_documented() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text()
    m = re.search(r"these (\d+)\nASCII bytes.*?```\n([^\n]+)\n```", doc, re.S)
    assert m and m.group(2).encode() == container.META_DICT and int(m.group(1)) == len(container.META_DICT)
    # the dictionary matters: the CNN-like names below deflate smaller with it
    names = b"".join(n.encode() for n in ("stem.0.weight", "stem.1.running_mean", "layer1.0.conv1.weight",
                                          "layer1.0.bn1.num_batches_tracked", "fc.bias"))
    with_d, plain = (zlib.compressobj(9, zlib.DEFLATED, -15, **kw) for kw in ({"zdict": container.META_DICT}, {}))
    assert len(with_d.compress(names) + with_d.flush()) < len(plain.compress(names) + plain.flush()) - 20
