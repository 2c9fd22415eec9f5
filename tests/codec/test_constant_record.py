"""The constant encoding (.dsz version 2): one value for a tensor whose elements share one
bit pattern — bit-exact, cheaper than a one-value codebook, version 1 kept when unused, and
hostile-input-safe like the other encodings."""

from __future__ import annotations

import numpy as np
import pytest

from deepshrink.codec import container
from deepshrink.errors import InputError

from .test_hostile import SAMPLE, _frame, _record, _rejects, _split


def test_constant_tensors_round_trip_bit_exactly() -> None:
    nan = np.frombuffer(np.uint32(0x7FC0_1234).tobytes(), dtype=np.float32)[0]  # a NaN with a payload
    tensors = {
        "ones": np.ones((64,), np.float32), "neg0": np.full((3, 5), -0.0, np.float32),
        "nan": np.full((7,), nan, np.float32), "big": np.full((2, 2), 1e30, np.float32),  # not float16: 4 bytes
        "i": np.full((40,), -3, np.int64), "b": np.ones((9,), bool), "h": np.full((33,), 2.5, np.float16),
        "mixed": np.array([1.0, 2.0] * 20, np.float32),
    }
    blob, infos = container.encode(tensors, version=2)
    assert blob[4] == 2  # version 2: a constant record is inside
    out = container.decode(blob)
    for name, a in tensors.items():
        b = out.tensors[name]
        assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes(), name
    enc = {i.name: i.encoding for i in infos}
    assert enc == {**{n: "constant" for n in tensors if n != "mixed"}, "mixed": "dense"}
    # record = length 1 + dtype, ndim, dims + encoding, storage + value + CRC 4
    sizes = {i.name: i.nbytes for i in infos}
    assert sizes["ones"] == 1 + 3 + 2 + 2 + 4  # 1.0 stored as float16
    assert sizes["big"] == 1 + 4 + 2 + 4 + 4
    assert sizes["i"] == 1 + 3 + 2 + 1 + 4  # int64 -3 stored as int8
    # the one-value codebook it replaces: 23 bytes for 64 ones (a 1-bit code per element)
    _, forced = container.encode({"ones": tensors["ones"]}, force={"ones": "dense"}, version=2)
    assert forced[0].nbytes == 23 and sizes["ones"] == 12


def test_files_without_constants_stay_version_1() -> None:
    assert SAMPLE[4] == 1
    blob, _ = container.encode({"x": np.ones(64, np.float32)}, force={"x": "dense"}, version=2)
    assert blob[4] == 1 and container.decode(blob).tensors["x"].sum() == 64


def _v2(head: bytes) -> bytes:
    return head[:4] + b"\x02" + head[5:]


@pytest.mark.parametrize(("body", "version", "message"), [
    (_record(1, (4,), bytes([3, 1]) + b"\0" * 4), 1, "unknown encoding 3"),  # constant needs version 2
    (_record(1, (0,), bytes([3, 1]) + b"\0" * 4), 2, "empty tensor"),
    (_record(1, (4,), bytes([3, 1]) + b"\0" * 2), 2, "constant value needs 4 bytes"),
    (_record(1, (4,), bytes([3, 1]) + b"\0" * 5), 2, "unexpected bytes"),
    (_record(1, (4,), bytes([3, 7]) + b"\0"), 2, "cannot hold"),  # float32 stored as int8
    (_record(1, (1 << 40,), bytes([3, 1]) + b"\0" * 4), 2, "max_ratio"),  # refused before allocating
    (_record(1, (4,), bytes([4, 1]) + b"\0" * 4), 2, "unknown encoding 4"),
])
def test_forged_constant_records(body: bytes, version: int, message: str) -> None:
    head, bodies = _split(SAMPLE)
    head = _v2(head) if version == 2 else head
    assert message in _rejects(_frame(head, [body, *bodies[1:]]))


def test_every_truncation_and_bit_flip_of_a_version_2_file_is_rejected() -> None:
    blob, _ = container.encode({"c": np.ones(32, np.float32), "w": np.arange(6, dtype=np.float32)},
                               source_kind="torch", source=b"pkg.mod:f", version=2)
    assert blob[4] == 2
    for n in range(len(blob)):
        with pytest.raises(InputError):
            container.decode(blob[:n])
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            _rejects(bytes(bad))
