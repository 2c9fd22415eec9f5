"""The verbs as the README shows them: configs importable from ``deepshrink`` (lazily), and a
keyword a verb does not take refused with its name instead of ignored."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import deepshrink as ds
from deepshrink.errors import InputError, UnknownOptionError


def test_every_config_imports_from_the_top_level_without_loading_torch():
    from deepshrink.prune import config as prune_configs
    from deepshrink.quantize import configs as quant_configs

    names = [n for n in quant_configs.__all__ if n.endswith("Config")]
    names += [n for n in vars(prune_configs) if n.endswith("Config") and n != "Config"]
    assert {"Int8StaticConfig", "QATConfig", "StructuredPruneConfig", "NMPruneConfig"} <= set(names)
    for n in names:
        assert n in ds.__all__ and getattr(ds, n) is (getattr(quant_configs, n, None) or getattr(prune_configs, n))
    src = str(Path(ds.__file__).resolve().parents[1])
    code = ("import sys; import deepshrink; from deepshrink import Int8StaticConfig, QATConfig; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-500:]


@pytest.fixture(scope="module")
def mlp(digits_mlp):
    return ds.load(digits_mlp, input_shapes=["x:1x64"])


@pytest.mark.parametrize("kw", ["output", "no_such_option"])
def test_quantize_refuses_an_unknown_keyword(tmp_path, monkeypatch, mlp, kw):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownOptionError, match=f"unexpected keyword argument '{kw}'"):
        ds.quantize(mlp, ds.Int8DynamicConfig(), **{kw: "q.onnx"})
    assert not list(tmp_path.iterdir())


def test_convert_and_bench_refuse_unknown_keywords(tmp_path, mlp):
    with pytest.raises(TypeError, match="'opset_version'"):  # UnknownOptionError is a TypeError too
        ds.convert(mlp, tmp_path / "m.onnx", opset_version=17)
    with pytest.raises(InputError, match="fp16 applies to the onnx → openvino conversion, not to torch → onnx"):
        ds.convert(mlp, tmp_path / "m.onnx", fp16=True)
    assert not list(tmp_path.iterdir())
    assert ds.convert(mlp, tmp_path / "m.onnx", int8=False).output.exists()  # switched off: nothing to refuse
    with pytest.raises(UnknownOptionError, match="'warmups'"):
        ds.bench([mlp], warmups=3)
