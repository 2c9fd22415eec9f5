"""Recipes are validated whole before any work: unknown steps and keys name themselves with the
valid choices, chains that cannot run and missing data name the step — one line, exit 2, nothing
written (through the real CLI)."""

from __future__ import annotations

import pytest

from deepshrink.cli._app import run_app
from deepshrink.errors import InputError
from deepshrink.recipe import BUILTIN, check_chain, load_recipe, parse_recipe

CNN = "deepshrink.examples:trained_digits_cnn"


def test_builtins_parse_and_chain():
    for name in BUILTIN:
        rec = load_recipe(name)
        assert rec.steps and rec.name == name
        check_chain(rec, "torch", has_data=True, has_labels=True)


def test_step_configs_are_the_verbs_configs():
    rec = parse_recipe({"steps": [{"prune": {"method": "structured", "sparsity": 0.5, "finetune_epochs": 3}},
                                  {"quantize": {"scheme": "int8-static", "observer": "mse"}}]})
    prune, quant = rec.steps
    assert type(prune.config).__name__ == "StructuredPruneConfig" and prune.config.ratio == 0.5
    assert prune.needs == "labels" and prune.takes == ("torch",) and prune.emits is None  # the kind it took
    assert type(quant.config).__name__ == "Int8StaticConfig" and quant.config.observer == "mse"
    assert quant.needs == "data" and quant.emits == "onnx"
    assert rec.to_dict() == {"steps": [{"prune": {"method": "structured", "sparsity": 0.5, "finetune_epochs": 3}},
                                       {"quantize": {"scheme": "int8-static", "observer": "mse"}}]}


@pytest.mark.parametrize("steps, needles", [
    ([{"quantise": {"scheme": "int8-dynamic"}}], ["step 1", "'quantise'", "did you mean 'quantize'", "prune"]),
    ([{"quantize": {"scheme": "int8-static", "obsever": "mse"}}], ["step 1 (quantize)", "'obsever'", "'observer'"]),
    ([{"prune": {"method": "structured", "sparsity": 0.5, "finetune_epoch": 3}}], ["step 1 (prune)", "'finetune_epochs'"]),
    ([{"quantize": {"scheme": "int3"}}], ["step 1 (quantize)", "'int3'", "int8-static"]),
    ([{"quantize": {}}], ["step 1 (quantize)", "needs a scheme"]),
    ([{"prune": {"method": "structured", "sparsity": 1.5}}], ["step 1 (prune)", "ratio"]),
    ([{"quantize": {"scheme": "int8-dynamic"}}, {"optimize": {}}], ["step 2 (optimize)", "not available"]),
    ([{"distill": {"derive": "layers=0"}}], ["step 1 (distill)", "leave 0 layers"]),
    ([{"distill": {"epochs": 2}}], ["step 1 (distill)", "earlier step"]),
    ([{"prune": {"sparsity": 0.5}}, {"distill": {"temprature": 2}}], ["step 2 (distill)", "did you mean 'temperature'"]),
    ([{"quantize": {"scheme": "int8-dynamic"}, "prune": {}}], ["step 1", "one verb"]),
    ([{"quantize": {"scheme": "qat", "bits": 4}}], ["step 1 (quantize)", "did you mean 'weight_bits'"]),  # not act_bits
    ([{"prune": {"sparsity": 0.5, "batch_size": 16}}], ["step 1 (prune)", "batch_size applies to fine-tuning"]),
    ([{"prune": {"sparsity": 0.5, "finetune_epochs": 1, "batch_size": 0}}], ["step 1 (prune)", "batch_size", ">= 1"]),
    ([{"prune": {"sparsity": 0.5, "finetune_epochs": 1, "mixed_precision": "fp16"}}], ["step 1 (prune)", "'fp16'",
                                                                                         "bf16"]),
])
def test_bad_recipes_name_the_step_and_key(steps, needles):
    with pytest.raises(InputError) as err:
        parse_recipe({"steps": steps}, name="r.yaml")
    msg = str(err.value)
    assert all(n in msg for n in needles), msg
    assert "\n" not in msg


def test_chain_checks():
    rec = parse_recipe({"steps": [{"quantize": {"scheme": "int8-dynamic"}}, {"prune": {"sparsity": 0.5}}]})
    with pytest.raises(InputError, match=r"step 2 \(prune\) needs a PyTorch model or a float ONNX one, but step 1 "
                       r"emits a quantized ONNX model; put prune before it"):
        check_chain(rec, "torch", has_data=True, has_labels=True)
    # a float ONNX model is pruned / distilled / QAT-trained as its PyTorch import and stays ONNX
    float_chain = parse_recipe({"steps": [{"prune": {"sparsity": 0.5}}, {"distill": {"derive": "width=0.5"}},
                                          {"quantize": {"scheme": "qat"}}]})
    assert check_chain(float_chain, "onnx", has_data=True, has_labels=True) == ["onnx", "onnx", "onnx"]
    assert check_chain(float_chain, "torch", has_data=True, has_labels=True) == ["torch", "torch", "onnx"]
    traced = parse_recipe({"steps": [{"convert": {"format": "pt2"}}, {"prune": {"sparsity": 0.5}}]})
    with pytest.raises(InputError, match=r"step 2 \(prune\) needs the model's Python modules, but step 1 \(convert\) "
                       r"writes a traced .pt2 graph"):
        check_chain(traced, "onnx", has_data=True, has_labels=True)
    tune = parse_recipe({"steps": [{"prune": {"sparsity": 0.5, "finetune_epochs": 1}}]})
    with pytest.raises(InputError, match=r"step 1 \(prune\): fine-tuning needs labelled data"):
        check_chain(tune, "torch", has_data=True, has_labels=False)
    packed = parse_recipe({"steps": [{"pack": {"fc_sparsity": 0.9}}, {"quantize": {"scheme": "int8-dynamic"}}]})
    with pytest.raises(InputError, match=r"step 2 \(quantize\) comes after step 1 \(pack\).*last step"):
        check_chain(packed, "torch", has_data=True, has_labels=True)
    with pytest.raises(InputError, match=r"step 1 \(pack\): method deep-compression: unknown key 'fc_sparsty'"):
        parse_recipe({"steps": [{"pack": {"fc_sparsty": 0.9}}]})
    static = parse_recipe({"steps": [{"quantize": {"scheme": "int8-static"}}]})
    with pytest.raises(InputError, match=r"step 1 \(quantize\): calibration needs data"):
        check_chain(static, "onnx", has_data=False, has_labels=False)
    assert check_chain(static, "onnx", has_data=True, has_labels=False) == ["onnx"]


@pytest.mark.parametrize("yaml_text, needle", [
    ("steps:\n  - quantize: {scheme: int8-static, obsever: mse}\n", "step 1 (quantize)"),
    ("steps:\n  - quantize: {scheme: int8-dynamic}\n  - prune: {method: structured, sparsity: 0.5}\n",
     "step 2 (prune) needs a PyTorch model"),
    ("steps:\n  - prune: {method: structured, sparsity: 0.5, finetune_epochs: 2}\n", "needs labelled data"),
    ("steps: [unclosed\n", "not valid YAML"),
])
def test_cli_refuses_before_any_work(tmp_path, capsys, yaml_text, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml_text)
    out = tmp_path / "out"
    rc = run_app(["compress", CNN, "--input-shape", "x:1x1x8x8", "-r", str(recipe), "-o", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_recipes_command_lists_one_line_each(capsys):
    assert run_app(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(BUILTIN) and all(ln.split()[0] in BUILTIN for ln in lines)
    assert run_app(["recipes", "prune-int8"]) == 0
    assert "scheme: int8-static" in capsys.readouterr().out
    assert run_app(["recipes", "nope"]) == 2


def test_resolved_recipe_spells_out_defaults_and_parses_back():
    for name in BUILTIN:
        rec = load_recipe(name)
        again = parse_recipe(rec.resolved())
        assert [s.config for s in again.steps] == [s.config for s in rec.steps], name
    prune = load_recipe("prune-int8").resolved()["steps"][0]["prune"]
    assert prune["method"] == "structured" and prune["ratio"] == 0.25 and prune["importance"] == "l2"


def test_an_onnx_model_keeps_its_names_through_qat_and_prune_steps(tmp_path, cnn_onnx):
    """A float ONNX model goes through QAT and prune steps as its PyTorch import and comes out as ONNX under its
    own input and output names (trial t: QAT wrote 'output' for the file's 'logits')."""
    import onnx

    import deepshrink as ds

    model = onnx.load(str(cnn_onnx))
    [out] = model.graph.output
    for node in model.graph.node:
        node.output[:] = ["logits" if o == out.name else o for o in node.output]
    out.name = "logits"
    src = tmp_path / "named.onnx"
    onnx.save(model, str(src))
    for name, steps in (("qat", [{"quantize": {"scheme": "qat", "epochs": 1}}]),
                        ("prune", [{"prune": {"method": "structured", "ratio": 0.25}}])):
        res = ds.compress(str(src), {"steps": steps}, tmp_path / name, data="digits:train", eval_data="digits:test",
                          measure=False)
        graph = onnx.load(str(res.model_path)).graph
        assert res.model_path.suffix == ".onnx"
        assert ([i.name for i in graph.input], [o.name for o in graph.output]) == (["x"], ["logits"]), name


def test_a_layer_count_the_model_cannot_give_is_refused_before_any_work(tmp_path):
    """``derive: layers=K`` on a CNN was refused only once the run had started (trial t); so is K above the stack."""
    import deepshrink as ds
    from deepshrink.examples import minilm
    from deepshrink.recipe.steps import check_layer_counts

    recipe = {"steps": [{"prune": {"sparsity": 0.25}}, {"distill": {"derive": "layers=2", "epochs": 1}}]}
    with pytest.raises(InputError, match=r"step 2 \(distill\): derive layers=2 needs a model with a stack of "
                                         r"transformer layers.*use derive: width=F"):
        ds.compress(CNN, recipe, tmp_path / "out", data="digits:train", input_shapes=["x:1x1x8x8"])
    assert not (tmp_path / "out").exists()
    encoder = minilm()  # 6 layers
    check_layer_counts(parse_recipe({"steps": [{"distill": {"derive": "layers=3"}}]}), encoder)
    with pytest.raises(InputError, match=r"step 2 \(distill\): derive layers=4: the model has only 3 layers"):
        check_layer_counts(parse_recipe({"steps": [{"distill": {"derive": "layers=3"}},
                                                   {"distill": {"derive": "layers=4"}}]}), encoder)
