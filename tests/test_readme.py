"""Every command in README.md runs, as a user would type it, and so do its Python blocks.

The commands are read from the README's ```bash blocks (continuation lines joined, comments and
``make`` lines dropped), so a command added to the README is tested without touching this file,
and a command that no longer works fails here. Each one runs in-process (``run_app``, the CLI's
own entry point) in a fresh folder holding what the command names: the files are built once per
session by the builders below (``INPUTS``), small enough that a command takes seconds, or taken
from the earlier README command that wrote them (``minilm.onnx`` comes from the README's own
``convert``, ``mlp.dsz`` from its ``pack``).

``./all-MiniLM-L6-v2/`` is a stand-in folder of that name: the real folder's layout (a
sentence-transformers BERT: mean pooling, normalisation, WordPiece tokenizer) with a 4-layer,
32-wide encoder and a 100-token vocabulary, seeded. The real 22 M-parameter model takes ~40 s
per command on 2 shared cores; it is covered by tests/recipe, tests/prune and the benchmarks.

What the test runs differently from the README is in ONE table, ``FASTER``, keyed by the README
command: each entry lists its substitutions (``old -> new``) or additions (``+ option``) and why.
``test_every_readme_command_is_covered`` fails when a README command changes under an entry.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(lang: str) -> list[str]:
    """The bodies of the README's fenced ```LANG blocks, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Every ``deepshrink ...`` command of the ```bash blocks, continuation lines joined, comments
    dropped, words joined by one space (the key of ``FASTER``)."""
    cmds = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "deepshrink":
                cmds.append(shlex.join(words))
            else:  # `make demo`, `make test` and the output shown as comments are not commands
                assert not words or words[0] == "make", f"README bash line not understood: {line!r}"
    return cmds


# ---------------------------------------------------------------------------------------------
# What the test runs differently from the README. Key: the README command (words joined by one
# space); value: (changes, reason). A change is "OLD -> NEW" (OLD must occur in the command),
# "+ WORDS" (appended), or TORCHSCRIPT: every PyTorch -> ONNX export of the command uses torch's
# torchscript exporter (`convert --exporter torchscript`, which the README shows), because a dynamo
# export of any BERT costs ~8 s of CPU however small it is (a Hugging Face model's `auto` export is
# torchscript already; the marker also covers the exports a recipe's steps make); tests/convert and
# tests/recipe cover the dynamo exports. Only speed: every flag shown still runs.
TORCHSCRIPT = "exports with the torchscript exporter"
FASTER: dict[str, tuple[list[str], str]] = {
    "deepshrink search cnn.onnx --data digits:train --eval-data digits:test --max-drop 0.5 --budget size=0.4x "
    "-o cnn-search/":
        (["+ --trials 6 --repeats 2"], "fewer trials and latency rounds (tests/search runs full searches)"),
    "deepshrink search ./all-MiniLM-L6-v2/ --data sentences:256 --target-cos 0.997 --min-cos 0.99 --trials 24 "
    "-o minilm-search/":
        (["sentences:256 -> sentences:32", "--trials 24 -> --trials 4", "+ --repeats 2"],
         "fewer sentences, trials and latency rounds"),
    "deepshrink compress my_pkg.models:resnet -w w.safetensors --input-shape x:1x3x224x224 --recipe prune-int8 "
    "-o out/ --data train.npz --eval-data val.npz":
        (["+ --repeats 2"], "the per-step latency rounds (default 20) are not what this test checks"),
    "deepshrink compress ./all-MiniLM-L6-v2/ --recipe int8 -o minilm/ --data sentences:64":
        (["sentences:64 -> sentences:16", "+ --repeats 2", TORCHSCRIPT], "fewer sentences and latency rounds"),
    "deepshrink compress my_pkg.models:resnet -w w.safetensors --input-shape x:1x3x224x224 --recipe my.yaml "
    "-o run/ --data train.npz --resume":
        (["+ --repeats 2"], "fewer latency rounds"),
    "deepshrink convert ./all-MiniLM-L6-v2/ minilm.onnx --data sentences:64 --exporter torchscript":
        (["sentences:64 -> sentences:16"], "fewer parity sentences"),
    "deepshrink bench ./all-MiniLM-L6-v2/ minilm.onnx --data lines.txt --batch 1 --threads 2":
        (["+ --repeats 2"], "fewer latency rounds"),
    "deepshrink quantize minilm.onnx -o minilm.int8.onnx --scheme auto --data sentences":
        (["--data sentences -> --data sentences:16", "+ --no-bench --trials 3"],
         "fewer calibration sentences and search trials; no table"),
    "deepshrink quantize cnn.onnx -o cnn.int8.onnx --scheme int8-static --data digits --observer mse":
        (["+ --no-bench"], "no timing"),
    "deepshrink quantize gpt.onnx -o gpt.int4.onnx --scheme int4-weight --method gptq --group-size 64 "
    "--data calib.npz":
        (["+ --no-bench"], "no timing"),
    "deepshrink quantize my_pkg.models:cnn -w cnn.safetensors --input-shape x:1x3x32x32 -o cnn.w4.onnx "
    "--scheme ptq --bits 4 --data calib.npz":
        (["+ --no-bench"], "no timing"),
    "deepshrink prune my_pkg.models:resnet -w w.safetensors --input-shape x:1x3x224x224 -o small.onnx "
    "--method structured --sparsity 0.5 --importance l2 --data train.npz --finetune-epochs 3":
        (["+ --repeats 2"], "fewer latency rounds"),
    "deepshrink prune deepshrink.examples:DigitsMLP -w mlp.safetensors -o sparse.safetensors --method gradual "
    "--sparsity 0.9 --data digits:train":
        (["+ --repeats 2"], "fewer latency rounds"),
    "deepshrink prune ./all-MiniLM-L6-v2/ -o minilm.pruned.onnx --method structured --sparsity 0.5 "
    "--heads-ratio 0.25 --importance activation --data sentences:32":
        (["sentences:32 -> sentences:16", "+ --repeats 2", TORCHSCRIPT], "fewer sentences and latency rounds"),
    "deepshrink distill --teacher ./all-MiniLM-L6-v2/ --derive layers=3 --data sentences:900 -o minilm3.onnx "
    "--epochs 2":
        (["sentences:900 -> sentences:16", "--epochs 2 -> --epochs 1", "+ --repeats 2", TORCHSCRIPT],
         "900 sentences x 2 epochs is minutes of training"),
    "deepshrink distill --teacher deepshrink.examples:DigitsCNN -w cnn.safetensors --derive width=0.5 "
    "--data digits:train --eval-data digits:test -o small.onnx --temperature 4 --alpha 0.9 --nproc 2":
        (["--nproc 2 -> --nproc 1", "+ --epochs 1 --repeats 2"],
         "two processes each import torch (~10 s here); DDP is tested in tests/distill and tests/train"),
    "deepshrink distill --teacher my_pkg:big -w big.safetensors --student my_pkg:small --data train.npz "
    "-o small.pt2 --resume":
        (["+ --epochs 1 --repeats 2"], "one epoch"),
    "deepshrink pack deepshrink.examples:DigitsMLP -w mlp.safetensors -o mlp.dsz --data digits:train "
    "--sparsity 0.94 --layer-sparsity fc3=0.8 --fc-bits 4 --other-bits 4 --eval-data digits:test":
        (["+ --prune-epochs 1 --finetune-epochs 1 --repeats 2"], "one epoch per stage"),
    "deepshrink bench model.onnx model.xml model.int8.tflite":
        (["+ --repeats 2"], "fewer latency rounds"),
}

# README commands that need an optional stack: skipped, with the reason, where it is missing.
NEEDS: dict[str, list[str]] = {
    "deepshrink convert model.onnx model.int8.tflite --int8 --data digits": ["tensorflow"],
    "deepshrink convert model.onnx model.xml": ["openvino"],
    "deepshrink convert digits.keras model.pt2 --via onnx": ["tensorflow", "tf2onnx"],
    "deepshrink convert face_detection_short_range.tflite face.onnx": ["tensorflow", "tf2onnx"],
    "deepshrink bench model.onnx model.xml model.int8.tflite": ["openvino", "tensorflow"],
}


def as_run(cmd: str) -> list[str]:
    """The words the test runs for README command ``cmd`` (``FASTER`` applied)."""
    changes, _why = FASTER.get(cmd, ([], ""))
    for change in changes:
        if change == TORCHSCRIPT:
            continue  # applied by the test, not to the words
        if change.startswith("+ "):
            cmd = f"{cmd} {change[2:]}"
        else:
            old, new = change.split(" -> ")
            assert old in cmd, f"FASTER entry {old!r} does not occur in {cmd!r}"
            cmd = cmd.replace(old, new)
    return shlex.split(cmd)


def outputs(words: list[str]) -> list[str]:
    """The paths a command writes: the value of ``-o`` / ``--output``, or ``convert``'s destination."""
    outs = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output")]
    if words[1] == "convert":
        outs.append(words[3])
    return outs


# ---------------------------------------------------------------------------------------------
# The files the commands name, built once per session. INPUTS: name -> builder; per command,
# OVERRIDE picks another builder where the same name stands for another model in that section.

MY_PKG = '''"""Tiny stand-ins for the README's user models (run in well under a second)."""
from .models import big, small  # noqa: F401
'''

MY_PKG_MODELS = '''import torch
from torch import nn


class TinyResNet(nn.Module):
    """A strided stem, one residual block with BatchNorm, global pool, linear: (N, 3, H, W) -> (N, 4)."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 5, stride=8, padding=2, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


class TinyCNN(nn.Module):
    """Two convs and a linear over (N, 3, 32, 32) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def resnet():
    return TinyResNet(8)


def cnn():
    return TinyCNN()


def big():
    return TinyResNet(16)


def small():
    return TinyResNet(4)
'''


def _images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3, size, size) float32 whose class (0-3) is which channel is lifted (3: none), and the labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.normal(0, 0.5, (n, 3, size, size)).astype(np.float32)
    for c in range(3):
        x[y == c, c] += 1.0
    return x, y.astype(np.int64)


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> torch.nn.Module:
    """A few seeded epochs of Adam on (x, y): the toy task is learnt to 100% in these."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(xt), 16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i:i + 16]), yt[i:i + 16]).backward()
            opt.step()
    return model.eval()


class Workspace:
    """Builds the README's input files on demand (once per session) under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}
        self.written: dict[str, Path] = {}  # name -> first README command output of that name
        self.skipped: set[str] = set()  # README commands skipped (an optional stack is missing)
        pkg = root / "pkgs" / "my_pkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(MY_PKG)
        (pkg / "models.py").write_text(MY_PKG_MODELS)
        self.pkgs = pkg.parent

    def get(self, builder: str) -> Path:
        if builder not in self.built:
            folder = self.root / "inputs" / builder
            folder.mkdir(parents=True)
            self.built[builder] = getattr(self, f"b_{builder}")(folder)
        return self.built[builder]

    # -- my_pkg models: trained on the toy task so pruning and quantizing keep their accuracy
    def _my(self, factory: str):
        import importlib

        torch.manual_seed(0)
        return getattr(importlib.import_module("my_pkg.models"), factory)()

    def b_resnet_weights(self, d: Path) -> Path:
        from safetensors.torch import save_file

        x, y = _images(64, 224, 0)
        save_file(_train(self._my("resnet"), x, y, 4).state_dict(), d / "w.safetensors")
        return d / "w.safetensors"

    def b_big_weights(self, d: Path) -> Path:
        from safetensors.torch import save_file

        x, y = _images(64, 224, 0)
        save_file(_train(self._my("big"), x, y, 4).state_dict(), d / "big.safetensors")
        return d / "big.safetensors"

    def b_cnn_weights(self, d: Path) -> Path:
        from safetensors.torch import save_file

        x, y = _images(64, 32, 0)
        save_file(_train(self._my("cnn"), x, y, 6).state_dict(), d / "cnn.safetensors")
        return d / "cnn.safetensors"

    def b_train(self, d: Path) -> Path:
        x, y = _images(64, 224, 1)
        np.savez(d / "train.npz", x=x, labels=y)
        return d / "train.npz"

    def b_val(self, d: Path) -> Path:
        x, y = _images(32, 224, 2)
        np.savez(d / "val.npz", x=x, labels=y)
        return d / "val.npz"

    def b_calib(self, d: Path) -> Path:
        np.savez(d / "calib.npz", x=_images(16, 224, 3)[0])
        return d / "calib.npz"

    def b_cnn_calib(self, d: Path) -> Path:
        x, y = _images(32, 32, 3)
        np.savez(d / "calib.npz", x=x, labels=y)
        return d / "calib.npz"

    # -- the digits models of deepshrink.examples (trained and cached, as tests/conftest.py's fixtures)
    def b_digits_cnn_weights(self, d: Path) -> Path:
        from safetensors.torch import save_file

        from deepshrink.examples import trained_digits_cnn

        save_file(trained_digits_cnn(0).state_dict(), d / "cnn.safetensors")
        return d / "cnn.safetensors"

    def b_digits_mlp_weights(self, d: Path) -> Path:
        from safetensors.torch import save_file

        from deepshrink.examples import trained_digits_mlp

        save_file(trained_digits_mlp(0).state_dict(), d / "mlp.safetensors")
        return d / "mlp.safetensors"

    def b_digits_onnx(self, d: Path) -> Path:
        import deepshrink as ds
        from deepshrink.examples import trained_digits_cnn

        ds.convert(ds.load(trained_digits_cnn(0), input_shapes=["x:1x1x8x8"]), d / "model.onnx")
        return d / "model.onnx"

    def b_tflite(self, d: Path) -> Path:
        """A ``.tflite`` stand-in for MediaPipe's detector: the digits CNN through the ONNX → TFLite route."""
        pytest.importorskip("tensorflow", reason="the TFLite routes need the [tf] extra")
        import deepshrink as ds

        ds.convert(self.get("digits_onnx"), d / "face_detection_short_range.tflite")
        return d / "face_detection_short_range.tflite"

    def b_recipe(self, d: Path) -> Path:
        """``my.yaml``: the README's recipe block as written."""
        (yaml,) = readme_blocks("yaml")
        (d / "my.yaml").write_text(yaml)
        return d / "my.yaml"

    def b_lines(self, d: Path) -> Path:
        from deepshrink.examples import stdlib_sentences

        (d / "lines.txt").write_text("\n".join(stdlib_sentences(8)) + "\n")
        return d / "lines.txt"

    def b_gpt(self, d: Path) -> Path:
        """A one-block character GPT (64 wide: MatMul weights whose rows split into 64-groups), untrained."""
        from deepshrink.examples import CharGPT

        torch.manual_seed(0)
        model = CharGPT(context=32, d=64, layers=1, heads=2).eval()
        with warnings.catch_warnings():  # the tracer's notes on the context-length check
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 32, dtype=torch.int64),), str(d / "gpt.onnx"), dynamo=False,
                              input_names=["ids"], output_names=["logits"], dynamic_axes={"ids": {0: "batch"}})
        return d / "gpt.onnx"

    def b_gpt_calib(self, d: Path) -> Path:
        from deepshrink.examples.chargpt import VOCAB_SIZE

        np.savez(d / "calib.npz", ids=np.random.default_rng(0).integers(0, VOCAB_SIZE, (16, 32)).astype(np.int64))
        return d / "calib.npz"

    def b_keras(self, d: Path) -> Path:
        pytest.importorskip("tensorflow", reason="the Keras route needs the [tf] extra")
        import keras

        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
        m.save(d / "digits.keras")
        return d / "digits.keras"

    def b_minilm(self, d: Path) -> Path:
        """A folder laid out as all-MiniLM-L6-v2 (sentence-transformers BERT), 4 layers x 32 wide, seeded."""
        import json

        pytest.importorskip("transformers", reason="Hugging Face folders need the [examples] extra")
        from transformers import BertConfig, BertModel

        folder = d / "all-MiniLM-L6-v2"
        folder.mkdir()
        letters = "abcdefghijklmnopqrstuvwxyz0123456789"
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,:;()'\"-_=", *letters, *("##" + c for c in letters)]
        vocab += ["the", "a", "of", "to", "is", "and", "in", "for", "return", "if", "this", "be"]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 128,
             "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
             "mask_token": "[MASK]"}))
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)
        BertModel(cfg).eval().save_pretrained(folder)
        (folder / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
             {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
        return folder


# name in a command -> builder (Workspace.b_<builder>)
INPUTS = {
    "my.yaml": "recipe", "w.safetensors": "resnet_weights", "big.safetensors": "big_weights",
    "cnn.safetensors": "cnn_weights", "mlp.safetensors": "digits_mlp_weights",
    "train.npz": "train", "val.npz": "val", "calib.npz": "calib", "lines.txt": "lines",
    "gpt.onnx": "gpt", "digits.keras": "keras", "all-MiniLM-L6-v2": "minilm",
    "model.onnx": "digits_onnx", "cnn.onnx": "digits_onnx", "face_detection_short_range.tflite": "tflite",
}
# command prefix -> {name: builder}, where the section means another file by the same name
OVERRIDE = {
    "deepshrink quantize gpt.onnx": {"calib.npz": "gpt_calib"},               # token ids
    "deepshrink quantize my_pkg.models:cnn": {"calib.npz": "cnn_calib"},      # 3x32x32 images
    "deepshrink distill --teacher deepshrink.examples:DigitsCNN": {"cnn.safetensors": "digits_cnn_weights"},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The session's input files, and my_pkg importable (as after ``export PYTHONPATH=...``).
    sys.path gets one entry, removed at the end (not a snapshot restored: packages imported
    meanwhile, such as onnxruntime.transformers, add their own entries and need them later)."""
    import sys

    w = Workspace(tmp_path_factory.mktemp("readme"))
    sys.path.insert(0, str(w.pkgs))
    yield w
    sys.path.remove(str(w.pkgs))
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[name]


@pytest.fixture
def user_env(ws, monkeypatch):
    """One torch thread (2 shared cores); PYTHONPATH names my_pkg's folder for any subprocess."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ws.pkgs), *filter(None, [os.environ.get("PYTHONPATH")])]))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs_of(cmd: str, words: list[str], ws: Workspace) -> dict[str, Path]:
    """The files and folders ``cmd`` reads, by the names it uses."""
    overrides = next((o for prefix, o in OVERRIDE.items() if cmd.startswith(prefix)), {})
    outs = {o.rstrip("/") for o in outputs(words)}
    found = {}
    for w in words[2:]:
        name = w.rstrip("/").removeprefix("./")
        if name in outs:
            continue
        if name in overrides:
            found[name] = ws.get(overrides[name])
        elif name in ws.written:
            found[name] = ws.written[name]
        elif "/" in name and name.split("/")[0] in ws.written:  # a file inside a folder an earlier command wrote
            found[name] = ws.written[name.split("/")[0]] / name.split("/", 1)[1]
        elif name in INPUTS:
            found[name] = ws.get(INPUTS[name])
        elif re.fullmatch(r"[\w.-]+\.(onnx|dsz|xml|tflite|npz|safetensors|pt2|txt|yaml)", name):
            producer = next((c for c in readme_commands() if name in outputs(shlex.split(c))), None)
            assert producer, f"{cmd}: nothing provides {name}"
            if producer in ws.skipped:
                pytest.skip(f"{name} comes from `{producer}`, which was skipped")
            pytest.fail(f"{name} comes from `{producer}`, which did not run before")
    return found


def _place(src: Path, dst: Path) -> None:
    """Link ``src`` into the command's folder under the name the command uses, with its sidecars."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    for side in (Path(f"{src}.tokenizer"), src.with_suffix(".bin") if src.suffix == ".xml" else None):
        if side is not None and side.exists():
            Path(f"{dst}.tokenizer" if side.name.endswith(".tokenizer") else dst.with_suffix(".bin")).symlink_to(side)


def onnx_checker(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


def _check_output(path: Path) -> None:
    """The file a command wrote is there and, where cheap, loads."""
    assert path.exists(), f"{path.name} was not written"
    if path.is_dir() and (path / "pareto.json").exists():  # search's OUT_DIR
        for name in ("best.yaml", "report.json", "report.md", "pareto.png"):
            assert (path / name).is_file(), f"{path}/{name} missing"
        if (path / "best.dsz").is_file():  # a Deep Compression point: the packed file, decodable
            from deepshrink.codec import unpack

            assert not (path / "best.onnx").exists() and unpack(path / "best.dsz").tensors
        else:
            onnx_checker(path / "best.onnx")
    elif path.is_dir():  # compress's OUT_DIR (README: "OUT_DIR ends with ...")
        for name in ("report.json", "report.md", "report.html", "recipe.yaml", "environment.json"):
            assert (path / name).is_file(), f"{path}/{name} missing"
        assert any(path.glob("model.*")), f"{path}: no model file"
    elif path.suffix == ".onnx":
        import onnx

        onnx.checker.check_model(str(path))
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        assert load_file(str(path))
    elif path.suffix == ".xml":
        assert path.with_suffix(".bin").is_file()
    elif path.suffix == ".pt2":
        assert torch.export.load(str(path)).module() is not None
    else:
        assert path.stat().st_size > 0


def test_every_readme_command_is_covered() -> None:
    """Every README command runs below; every entry of FASTER / NEEDS / OVERRIDE names one that exists."""
    cmds = readme_commands()
    assert len(cmds) >= 25, cmds  # the parser still finds the README's commands
    for table in (FASTER, NEEDS):
        stale = [k for k in table if k not in cmds]
        assert not stale, f"no README command is {stale}: update the table with the README"
    for prefix in OVERRIDE:
        assert any(c.startswith(prefix) for c in cmds), f"OVERRIDE {prefix!r} matches no README command"
    for cmd in cmds:
        as_run(cmd)  # each substitution still applies


def _torchscript_exports(monkeypatch) -> None:
    """Every PyTorch -> ONNX export of the command uses the torchscript exporter (see TORCHSCRIPT)."""
    import sys

    from deepshrink.convert import export

    real = export.export_onnx

    def torchscript_export(*args, **kwargs):
        return real(*args, **{**kwargs, "exporter": "torchscript"})

    for module in [m for name, m in sys.modules.items() if name.startswith("deepshrink")]:
        if getattr(module, "export_onnx", None) is real:
            monkeypatch.setattr(module, "export_onnx", torchscript_export)


def _interrupted_run(words: list[str], monkeypatch, capsys) -> None:
    """What ``compress ... --resume`` comes after: the same command without ``--resume``, stopped
    (Ctrl-C) as its second step starts; the resumed run must then reuse the first step."""
    from deepshrink.recipe import runner

    real, calls = runner._apply, []

    def stop_at_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(runner, "_apply", stop_at_second_step)
        rc, out, err = run_cli(capsys, *[w for w in words[1:] if w != "--resume"])
    assert rc != 0 and len(calls) == 2, (rc, out, err)


def _short(cmd: str) -> str:
    return re.sub(r"[^\w.:=-]+", "_", " ".join(cmd.split()[1:4]))[:60]


@pytest.mark.slow  # ~3 s each, ~100 s of CPU for all of them (the MiniLM and compress ones most)
@pytest.mark.parametrize("cmd", readme_commands(), ids=[f"{i:02d}-{_short(c)}" for i, c in enumerate(readme_commands())])
def test_readme_command(cmd, ws, user_env, tmp_path, monkeypatch, capsys) -> None:
    words = as_run(cmd)
    here = tmp_path / "cwd"
    here.mkdir()
    try:
        for module in NEEDS.get(cmd, []):
            pytest.importorskip(module, reason=f"`{cmd}` needs {module}")
        for name, src in _inputs_of(cmd, words, ws).items():
            _place(src, here / name)
    except pytest.skip.Exception:
        ws.skipped.add(cmd)
        raise
    if TORCHSCRIPT in FASTER.get(cmd, ([], ""))[0]:
        _torchscript_exports(monkeypatch)
    monkeypatch.chdir(here)
    if words[1] == "compress" and "--resume" in words:
        _interrupted_run(words, monkeypatch, capsys)
    rc, out, err = run_cli(capsys, *words[1:])
    assert rc == 0, f"`{shlex.join(words)}` exited {rc}\n{out}\n{err}"
    assert "Traceback" not in err
    if words[1] == "compress" and "--resume" in words:
        assert re.search(r"step 1: .* finished before, reused", out), out
    for o in outputs(words):
        _check_output(here / o)
        ws.written.setdefault(o.rstrip("/"), here / o.rstrip("/"))


def test_readme_python_blocks(ws, user_env, tmp_path, monkeypatch, capsys) -> None:
    """The README's Python blocks, in order in one namespace, in a folder with the files they name;
    ``model``, ``x`` and ``y`` (the Trainer's placeholders) are my_pkg's resnet and a batch of its data."""
    blocks = readme_blocks("python")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for name in ("w.safetensors", "calib.npz", "val.npz"):
        (tmp_path / name).symlink_to(ws.get(INPUTS[name]))
    x, y = _images(16, 224, 5)
    from my_pkg.models import resnet

    ns = {"model": resnet(), "x": torch.from_numpy(x), "y": torch.from_numpy(y)}
    # the first block benches model.int8.onnx beside the model.onnx it wrote: made as the CLI would,
    # `deepshrink quantize model.onnx -o model.int8.onnx`, just before that line
    first, rest = blocks[0].split("table = ds.bench(", 1)
    exec(compile(first, "README.md (Python block 1)", "exec"), ns)
    assert run_cli(capsys, "quantize", "model.onnx", "-o", "model.int8.onnx", "--no-bench")[0] == 0
    exec(compile("table = ds.bench(" + rest, "README.md (Python block 1, from ds.bench)", "exec"), ns)
    assert ns["res"].hops[0].parity.ok
    assert ns["report"].ok
    (tmp_path / "model.int8.onnx").unlink()  # the second block writes it again
    exec(compile(blocks[1], "README.md (Python block 2)", "exec"), ns)
    q = ns["q"]
    assert q.report.layers and "quantized" in q.report.summary, q.report.summary
    assert (tmp_path / "model.int8.onnx").is_file()
    assert (tmp_path / "ckpt").is_dir()
    assert ns["h"].model is not q.model.model
