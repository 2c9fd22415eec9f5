"""Long fuzz run of the .dsz decoder (the test suite runs a few seconds of the same idea).

Files: a Deep-Compression-packed digits MLP (sparse + dense + raw records, torch source), a
lossless-packed ONNX digits MLP (ONNX source) and a Deep-Compression-packed digits CNN with its
BatchNorms folded (constant tensors, which `.dsz` 3 keeps in the deflated metadata). Mutations: truncation, bit flips, random byte
runs, changes inside the inflated metadata (deflated again) — half of them with every CRC32 recomputed afterwards, so the parser behind the checksums
is exercised, not just the checksum. Every outcome must be a clean decode or one
``InputError``; anything else (another exception, a decode past the reader's max_ratio) is a
failure, printed with the seed that reproduces it.

    python benchmarks/fuzz_codec.py --seconds 300
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import md_table, this_command, write_result  # noqa: E402


def _files() -> dict[str, bytes]:
    import torch

    from deepshrink.codec import DeepCompressionConfig, PackConfig, pack
    from deepshrink.examples import trained_digits_cnn, trained_digits_mlp

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz_dsz."))
    model = trained_digits_mlp(0)
    cfg = DeepCompressionConfig(fc_sparsity=0.94, layer_sparsity={"fc3": 0.8}, fc_bits=4, other_bits=4,
                                prune_epochs=0, finetune_epochs=0)
    a = pack(model, cfg, output=tmp / "mlp.dsz", factory="deepshrink.examples:DigitsMLP")
    onnx_path = tmp / "mlp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 64),), str(onnx_path), input_names=["x"], dynamo=False)
    b = pack(str(onnx_path), PackConfig(), output=tmp / "onnx.dsz")
    cnn_cfg = DeepCompressionConfig(fc_sparsity=0.6, conv_sparsity=0.93, conv_bits=3, fc_bits=3, other_bits=4,
                                    fold_bn=True, prune_epochs=0, finetune_epochs=0)
    c = pack(trained_digits_cnn(0), cnn_cfg, output=tmp / "cnn.dsz", factory="deepshrink.examples:DigitsCNN")
    return {"mlp (torch, DC)": Path(a.path).read_bytes(), "mlp (onnx, lossless)": Path(b.path).read_bytes(),
            "cnn (torch, DC, BatchNorm folded: 16 constant tensors)": Path(c.path).read_bytes()}


def _refresh(blob: bytes) -> bytes:
    """Recompute every record CRC and the file CRC where the framing still parses."""
    from deepshrink.codec.container import _Reader, _varint

    try:
        r = _Reader(memoryview(blob[:-4]), "f")
        r.take(7, "h")
        r.varint("n", 1 << 40)
        r.varint("m", 1 << 40)
        r.take(r.varint("z", 1 << 40), "meta")
        out = [bytes(blob[:r.pos])]
        while r.remaining():  # version 3: constant tensors have no record, so read records to the end
            body = bytes(r.take(r.varint("len", 1 << 40), "body"))
            r.take(4, "crc")
            out.append(_varint(len(body)) + body + zlib.crc32(body).to_bytes(4, "little"))
        out.append(bytes(r.take(r.remaining(), "rest")))
        body = b"".join(out)
    except Exception:  # noqa: BLE001 - framing broken: only the file CRC is refreshed
        body = blob[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def _mutate_metadata(rng: random.Random, blob: bytes) -> bytes:
    """Inflate the metadata (names, and in version 3 every tensor's dtype, shape, encoding and
    constant value), change 1-4 bytes of it, deflate it again: the parser behind the DEFLATE
    stream is reached, which raw byte mutations of the compressed stream rarely do."""
    from deepshrink.codec.container import META_DICT, _Reader, _varint

    r = _Reader(memoryview(blob[:-4]), "f")
    head = bytes(r.take(7, "h"))
    n = r.varint("n", 1 << 40)
    r.varint("m", 1 << 40)
    kw = {"zdict": META_DICT} if blob[4] >= 3 else {}
    meta = bytearray(zlib.decompressobj(-15, **kw).decompress(bytes(r.take(r.varint("z", 1 << 40), "meta"))))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(meta) + 1)
        kind = rng.choice(["flip", "insert", "delete"])
        if kind == "flip" and i < len(meta):
            meta[i] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            meta[i:i] = bytes([rng.randrange(256)])
        else:
            del meta[i:i + 1]
    z = zlib.compressobj(9, zlib.DEFLATED, -15, **kw)
    mz = z.compress(bytes(meta)) + z.flush()
    return head + _varint(n) + _varint(len(meta)) + _varint(len(mz)) + mz + blob[r.pos:]


def _mutate(rng: random.Random, blob: bytes) -> tuple[str, bytes]:
    b = bytearray(blob)
    op = rng.choice(["truncate", "flip", "bytes", "insert", "delete", "metadata"])
    if op == "metadata":
        return op, _mutate_metadata(rng, blob)
    if op == "truncate":
        return op, bytes(b[: rng.randrange(len(b))])
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        if op == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif op == "bytes":
            run = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            b[i:i + len(run)] = run
        elif op == "insert":
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del b[i:i + rng.randint(1, 8)]
    return op, bytes(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from deepshrink.codec import container
    from deepshrink.errors import InputError

    files = _files()
    rng = random.Random(args.seed)
    counts: Counter[tuple[str, str, bool, str]] = Counter()
    failures: list[str] = []
    end = time.time() + args.seconds
    n = 0
    while time.time() < end:
        name = rng.choice(list(files))
        case_seed = rng.randrange(1 << 30)
        crng = random.Random(case_seed)
        op, blob = _mutate(crng, files[name])
        refreshed = crng.random() < 0.5
        if refreshed and len(blob) > 4:
            blob = _refresh(blob)
        try:
            out = container.decode(blob)
            size = sum(a.nbytes for a in out.tensors.values())
            outcome = "decoded" if blob != files[name] else "decoded (mutation rewrote the same bytes)"
            if size > container.MAX_RATIO * len(blob) + (16 << 20):  # the reader's own policy
                failures.append(f"{name} case {case_seed}: decoded {size} bytes from {len(blob)}")
        except InputError:
            outcome = "InputError"
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
            outcome = "CRASH"
            failures.append(f"{name} case {case_seed}: {type(exc).__name__}: {exc}")
        counts[(name, op, refreshed, outcome)] += 1
        n += 1
    rows = [[name, op, "yes" if ref else "no", outcome, c] for (name, op, ref, outcome), c in sorted(counts.items())]
    body = (f"{n:,} mutated files in {args.seconds:.0f} s (seed {args.seed}); failures: {len(failures)}.\n\n"
            + md_table(["file", "mutation", "CRCs recomputed", "outcome", "count"], rows)
            + ("\n\nFailures:\n" + "\n".join(f"- {f}" for f in failures[:20]) if failures else ""))
    if args.no_write:
        print(body)
    else:
        write_result("codec_fuzz", "Deep Compression container: decoder fuzz run (issue 16)", this_command(), body)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
