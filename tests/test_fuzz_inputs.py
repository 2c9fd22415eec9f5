"""Property tests (hypothesis) of the input parsers a user's files reach: recipes, configs, ONNX files.

Property, for every generated input: the parser returns a value, or raises a
``deepshrink.errors.DeepshrinkError`` with a message — never another exception, never a hang
(hypothesis ``deadline``), never a large allocation (peak RSS growth bounded). Built configs and
recipes round-trip through their dict form. Derandomized: the same examples every run. The long
run is ``benchmarks/fuzz_inputs.py`` (results in ``benchmarks/results/fuzz_inputs.md``).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli
from fuzz_helpers import (
    PARAMS,
    RECIPES,
    YAML_TEXT,
    OnnxSeeds,
    check_config_dict,
    check_onnx,
    check_recipe,
    check_recipe_file,
    check_verb_config,
    config_dicts,
    onnx_cases,
    rss_bytes,
    write_case,
)

# a hung parser fails within seconds; generous, as the 2-core machine is shared
FAST = settings(max_examples=150, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ONNX = settings(max_examples=120, deadline=10000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
# no single input may grow the process by this much (a hostile dim or length read into memory would)
RSS_GROWTH = 512 << 20


@pytest.fixture(scope="module")
def seeds():
    return OnnxSeeds()


@given(config_dicts())
@FAST
def test_config_from_dict(data):
    check_config_dict(data)


@given(st.sampled_from(["quantize", "prune", "pack", "distill", "optimize"]), st.data())
@FAST
def test_verb_configs(verb, data):
    names = {"quantize": ["int8-dynamic", "int8-static", "int4-weight", "kmeans", "log2", "auto", "qat", "ptq",
                          "mixed", "bogus"],
             "prune": ["magnitude", "gradual", "nm", "structured", "bogus"],
             "pack": ["deep-compression", "lossless"], "distill": ["-"], "optimize": ["-"]}[verb]
    name = data.draw(st.sampled_from(names))
    params = data.draw(PARAMS)
    check_verb_config(verb, name, {str(k): v for k, v in params.items()})


@given(RECIPES)
@FAST
def test_parse_recipe(raw):
    check_recipe(raw)


@given(st.one_of(YAML_TEXT, RECIPES.map(lambda r: __import__("yaml").safe_dump(r, allow_unicode=True))
                 .filter(lambda s: True), st.binary(max_size=64)))
@settings(max_examples=100, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_load_recipe_file(tmp_path, text):
    check_recipe_file(tmp_path, text)


def test_info_writes_nothing_in_the_current_folder(seeds, tmp_path, monkeypatch):
    """Found by the fuzzer: on a graph whose shapes ONNX Runtime's symbolic inference cannot complete (here an
    op it does not know), ``info``'s FLOP count left ``sym_shape_infer_temp.onnx`` and one uuid-named ``.data``
    file per tensor in the current folder."""
    import onnx

    from deepshrink.evaluate.info import info

    m = onnx.ModelProto()
    m.CopyFrom(seeds.inline)
    next(n for n in m.graph.node if n.op_type == "Relu").op_type = "NoSuchOp"
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert info(path)["ops"]["NoSuchOp"] == 1
    assert not list(cwd.iterdir())


def test_config_type_must_be_a_name():
    """Found by the fuzzer: a non-string ``type`` raised TypeError (unhashable list) instead of one line."""
    from deepshrink.core.config import config_from_dict
    from deepshrink.errors import InputError

    with pytest.raises(InputError, match="config type must be a class name"):
        config_from_dict({"type": []})
    with pytest.raises(InputError, match="a config is a mapping"):
        config_from_dict([("type", "Int8DynamicConfig")])


@pytest.mark.parametrize("edit, needle", [
    (lambda t: (t.ClearField("dims"),), "needs 4 bytes"),  # raw data of a (32, 16) table read as a scalar
    (lambda t: setattr(t, "data_type", 8), "does not allow"),  # STRING values as raw bytes
    (lambda t: setattr(t, "data_type", 0), "unknown data type"),
    (lambda t: t.dims.extend([2**40]), "needs"),  # a huge dimension: refused from its count, never allocated
])
def test_tensor_data_must_fit_dims_and_dtype(seeds, tmp_path, edit, needle):
    """Found by the fuzzer: an initializer whose raw bytes disagree with its dims or dtype was accepted by the
    loader, and ``info`` then failed inside numpy (ValueError / TypeError)."""
    import onnx

    import deepshrink as ds
    from deepshrink.errors import InputError

    m = onnx.ModelProto()
    m.CopyFrom(seeds.inline)
    edit(next(t for t in m.graph.initializer if t.name == "wte"))
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(InputError, match=needle):
        ds.load(path)


def test_recipe_step_keys_need_not_be_strings():
    """Found by the long fuzz run: YAML ``- evaluate: {0: null}`` raised TypeError (str.join on an int key)."""
    from deepshrink.errors import InputError
    from deepshrink.recipe.steps import parse_recipe

    with pytest.raises(InputError, match=r"takes no parameters \(got 0\)"):
        parse_recipe({"steps": [{"evaluate": {0: None}}]})


def test_onnx_seeds_load(seeds):
    """Control: the unmutated seeds load (so a refusal below is the mutation's doing)."""
    assert check_onnx(seeds, seeds.inline.SerializeToString(), None) == "ok"
    ext = seeds.external.SerializeToString().replace(b"seed.onnx.data", b"case.onnx.data")
    assert check_onnx(seeds, ext, seeds.data) == "ok"


@given(st.data())
@ONNX
def test_mutated_onnx_loads_or_refuses(seeds, data):
    before = rss_bytes()
    _what, model, side = data.draw(onnx_cases(seeds))
    check_onnx(seeds, model, side)
    assert rss_bytes() - before < RSS_GROWTH


# the CLI on a few mutated files: exit status 0 or 2, and a refusal is one line
CLI_CASES = 12


@given(st.data())
@settings(max_examples=CLI_CASES, deadline=30000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_mutated_onnx_through_the_cli(seeds, capsys, tmp_path, monkeypatch, data):
    _what, model, side = data.draw(onnx_cases(seeds))
    path = write_case(seeds, model, side)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    rc, out, err = run_cli(capsys, "info", path)
    assert not list(cwd.iterdir())  # nothing written where the user stands
    assert "Traceback" not in out + err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), err


@given(st.one_of(YAML_TEXT, RECIPES.map(lambda r: __import__("yaml").safe_dump(r, allow_unicode=True))))
@settings(max_examples=CLI_CASES, deadline=30000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_fuzzed_recipe_through_the_cli(capsys, tmp_path, text):
    """``compress`` reads the recipe first: a bad one is one line; a good one reaches the (missing) model."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "compress", tmp_path / "missing.onnx", "--recipe", recipe, "-o", out)
    assert "Traceback" not in stdout + err
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not out.exists()


def test_names_must_be_utf8(seeds, tmp_path):
    """Found by the long fuzz run: protobuf returns bytes for a string field holding invalid UTF-8, and the
    external-data check failed on them with TypeError (``ord()`` of an int)."""
    import onnx

    import deepshrink as ds
    from deepshrink.errors import InputError

    for old, new in ((b"case.onnx.data", b"case.onnx.dat\xff"), (b"MatMul", b"MatMu\xff")):
        blob = seeds.external.SerializeToString().replace(b"seed.onnx.data", b"case.onnx.data").replace(old, new)
        path = write_case(seeds, blob, seeds.data)
        assert isinstance(onnx.load(str(path), load_external_data=False), onnx.ModelProto)
        with pytest.raises(InputError, match="not valid UTF-8"):
            ds.load(path)


def test_pack_method_must_be_a_name():
    """Found by the long fuzz run: ``pack: {method: []}`` raised TypeError (unhashable list)."""
    from deepshrink.errors import InputError
    from deepshrink.recipe.steps import parse_recipe

    with pytest.raises(InputError, match="use deep-compression or lossless"):
        parse_recipe({"steps": [{"pack": {"method": []}}]})
