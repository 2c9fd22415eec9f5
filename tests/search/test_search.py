"""``ds.search`` / ``deepshrink search`` on the digits MLP (issue 14): recipe replay, held-out
figures, determinism, budget not met (exit 4), and the option parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("optuna")

import deepshrink as ds  # noqa: E402
from deepshrink.errors import InputError  # noqa: E402
from deepshrink.search import BudgetNotMetError, SearchConfig, parse_budget, parse_duration  # noqa: E402

DATA, EVAL = "digits:train", "digits:test"


@pytest.fixture(scope="module")
def size_run(tmp_path_factory, mlp_onnx):
    """A search with a size budget and 2 timing rounds: the optimiser sees (accuracy lost, size), both exact."""
    out = tmp_path_factory.mktemp("run") / "a"
    # quantization choices only (tests/search/test_pack.py covers Deep Compression): with pack="auto" the one-shot
    # .dsz point wins on some CPUs (Intel Xeon AMX, session h) and not on others, and these tests read best.onnx
    cfg = SearchConfig(max_drop=1.0, budget=parse_budget("size=0.3x"), trials=8, repeats=2, final_repeats=5, seed=3,
                       pack="off")
    return ds.search(str(mlp_onnx), DATA, cfg, out, eval_data=EVAL), cfg


def test_chosen_point_meets_target_and_budget_on_held_out(size_run, measured):
    res, _ = size_run
    assert res.met
    c = res.report["chosen"]
    assert c["size_ratio"] <= 0.3
    assert c["final_timing"]["median_ms"] > 0  # the chosen point is one of the finalists re-timed together
    # pareto.json carries each re-timed point's final timing too, the figure report.md and the chosen line quote
    front = json.loads((res.out_dir / "pareto.json").read_text())["front"]
    timed = {p["trial"]: p["final_timing"] for p in front if "final_timing" in p}
    assert timed and all(t == res.report["final_timing"][f"trial {k}"] for k, t in timed.items())
    # judged on held-out samples, reported on a further part the search never saw
    d = res.report["data"]
    assert (d["select"], d["test"]) == ("digits:test[0:180]", "digits:test[180:360]")
    assert c["select"]["drop_points"] <= 1.0
    # seed 0: 0.0 pt on the 180 test digits (one digit is 0.56 pt); the bound allows three
    assert measured("search_test_drop_points", c["test"]["drop_points"], "upper", margin=0) <= 3 * 100 / 180
    # every layer gets a choice, and the sensitivity of each choice is reported
    assert len(res.report["layers"]) == 3
    assert all(lay["chosen"] in lay["options"] for lay in res.report["layers"])
    assert all(set(lay["sensitivity"]) == set(lay["options"]) - {"float"} for lay in res.report["layers"])
    # the plain-int8 peer was measured in the same run
    assert res.report["plain_int8"]["choices"] == {"int8": 3}


def test_best_yaml_replays_byte_for_byte(size_run, tmp_path):
    res, _ = size_run
    out = res.out_dir
    assert {p.name for p in out.iterdir()} >= {"best.onnx", "best.yaml", "pareto.json", "report.json", "report.md",
                                               "pareto.png"}
    assert res.report["reproduced"]["matches_candidate"]
    replay = ds.compress(str(res.report["source"]), str(out / "best.yaml"), tmp_path / "c", data=DATA,
                         eval_data=EVAL, measure=False)
    assert Path(replay.model_path).read_bytes() == (out / "best.onnx").read_bytes()


def test_no_candidate_is_built_twice(size_run):
    res, _ = size_run
    cands = res.report["candidates"]
    keys = [json.dumps(c["layers"], sort_keys=True) for c in cands]
    assert len(keys) == len(set(keys))
    assert res.report["search"]["built"] == len([c for c in cands if "error" not in c])


def test_same_seed_same_trials(size_run, tmp_path, mlp_onnx):
    res, cfg = size_run
    again = ds.search(str(mlp_onnx), DATA, cfg, tmp_path / "b", eval_data=EVAL)

    def untimed(report):
        return [{k: v for k, v in c.items() if k not in ("latency_ratio", "latency_spread", "latency_ms", "build_s",
                                                         "final_timing")} for c in report["candidates"]]

    assert untimed(again.report) == untimed(res.report)
    # the chosen point is picked among the fastest finalists by measured latency, which differs from run to
    # run on a shared machine (seen under load: codebook vs int8 on the 0.03 ms MLP); it is the same point
    # when nothing is timed (test_untimed_search_gives_the_same_pareto_json)
    assert again.report["chosen"]["trial"] in {c["trial"] for c in res.report["candidates"] if "error" not in c}


def test_untimed_search_gives_the_same_pareto_json(tmp_path, mlp_onnx):
    cfg = SearchConfig(max_drop=1.0, trials=5, repeats=0, seed=1)
    a = ds.search(str(mlp_onnx), DATA, cfg, tmp_path / "a", eval_data=EVAL)
    b = ds.search(str(mlp_onnx), DATA, cfg, tmp_path / "b", eval_data=EVAL)
    assert (a.out_dir / "pareto.json").read_bytes() == (b.out_dir / "pareto.json").read_bytes()
    # without timing the search minimises size: nothing that meets the target is smaller
    feasible = [c for c in a.report["candidates"] if c["select"]["drop_points"] <= 1.0]
    assert a.report["chosen"]["size_bytes"] == min(c["size_bytes"] for c in feasible)


def test_budget_not_met_exit_4_reports_written(tmp_path, mlp_onnx, capsys):
    from deepshrink.cli import run_app

    out = tmp_path / "run"
    # 1 kB: below any packing of the MLP (fine-tuned Deep Compression through its import met 5 kB at 1 pt)
    rc = run_app(["search", str(mlp_onnx), "-d", DATA, "--eval-data", EVAL, "--max-drop", "1", "--budget",
                  "size=1KB", "--trials", "4", "--repeats", "0", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 4
    assert "no candidate meets" in err and "closest is trial" in err and "over)" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "pareto.json"} <= names and "best.onnx" not in names
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["met"] is False and report["closest"]["size_bytes"] > 1000


def test_api_budget_not_met_raises_with_result(tmp_path, mlp_onnx):
    cfg = SearchConfig(max_drop=1.0, budget=parse_budget("size=1KB"), trials=2, repeats=0)
    with pytest.raises(BudgetNotMetError) as info:
        ds.search(str(mlp_onnx), DATA, cfg, tmp_path / "r", eval_data=EVAL)
    assert info.value.exit_code == 4 and info.value.result is not None and not info.value.result.met


@pytest.mark.parametrize(("text", "resource", "value", "relative"), [
    ("size=2MB", "size", 2e6, False), ("size=512KiB", "size", 512 * 1024, False), ("size=0.1x", "size", 0.1, True),
    ("latency=0.5x", "latency", 0.5, True), ("latency=2ms", "latency", 2.0, False)])
def test_parse_budget(text, resource, value, relative):
    b = parse_budget(text)
    assert (b.resource, b.value, b.relative) == (resource, value, relative)


@pytest.mark.parametrize("text", ["size", "size=", "size=2MS", "latency=3MB", "speed=2x", "size=0x", "size=-1MB"])
def test_parse_budget_refuses(text):
    with pytest.raises(InputError):
        parse_budget(text)


def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    with pytest.raises(InputError):
        parse_duration("10 minutes")


def test_config_refuses_contradictions():
    for bad in ({"max_drop": 1, "target_cos": 0.99}, {}, {"target_cos": 0.99, "min_cos": 0.995},
                {"max_drop": 1, "min_cos": 0.9}, {"max_drop": 1, "choices": ("float",)},
                {"max_drop": -1}, {"max_drop": 1, "repeats": 0, "budget": {"resource": "latency", "value": 0.5,
                                                                           "relative": True}}):
        with pytest.raises(InputError):
            SearchConfig.build(**bad)
    assert SearchConfig(target_cos=0.997).worst_cos == 0.99
    assert SearchConfig(max_drop=1, ray=True).ray == "local" and SearchConfig(max_drop=1, ray=False).ray is None
    with pytest.raises(InputError, match="give ray too"):
        SearchConfig.build(max_drop=1, ray_workers=2)
    assert SearchConfig(target_cos=0.95).worst_cos == 0.95


def test_conv_network_unlabelled_cosine_target(tmp_path, cnn_onnx, digits):
    """A conv network gets static int8 (QLinearConv); without labels the target is output cosine."""
    from deepshrink.core.data import Dataset

    data = Dataset({"x": digits.x_train[:400]}, None, "digits-unlabelled")
    cfg = SearchConfig(target_cos=0.999, min_cos=0.99, choices=("float", "int8", "codebook"), trials=4, repeats=0)
    res = ds.search(str(cnn_onnx), data, cfg, tmp_path / "s")
    r = res.report
    assert r["int8"].startswith("int8-static")
    assert [lay["op_type"] for lay in r["layers"]] == ["Conv"] * 4 + ["Gemm"]
    assert all("int4" not in lay["options"] for lay in r["layers"])  # no MatMulNBits for Conv / Gemm
    c = r["chosen"]
    assert c["select"]["cos_mean"] >= 0.999 and c["select"]["cos_min"] >= 0.99
    assert c["select"]["drop_points"] is None  # no labels, no accuracy
    # calibration 300 of the 400 samples; the last 100 held out, split 50 / 50
    assert (r["data"]["calibration_samples"], r["data"]["select_samples"], r["data"]["test_samples"]) == (300, 50, 50)
    assert r["reproduced"]["matches_candidate"]


def test_cli_json_with_an_absolute_latency_budget(tmp_path, mlp_onnx, capsys):
    from deepshrink.cli import run_app

    rc = run_app(["search", str(mlp_onnx), "-d", DATA, "--eval-data", EVAL, "--max-drop", "1", "--budget",
                  "latency=1000ms", "--trials", "3", "--repeats", "2", "--json", "-o", str(tmp_path / "j")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["met"]
    # 1000 ms against a reference that runs in well under 1 ms: the budget is a ratio far above 1
    assert out["report"]["verdict"]["budget_ratio"] > 100
    assert Path(out["files"]["best.onnx"]).is_file()


@pytest.mark.parametrize(("argv", "expected"), [
    (["search", "m.onnx", "--ray", "-o", "x"], ["search", "m.onnx", "--ray", "local", "-o", "x"]),
    (["search", "m.onnx", "-o", "x", "--ray"], ["search", "m.onnx", "-o", "x", "--ray", "local"]),
    (["search", "m.onnx", "--ray", "10.0.0.2:6379"], ["search", "m.onnx", "--ray", "10.0.0.2:6379"]),
    (["search", "m.onnx", "--ray=auto"], ["search", "m.onnx", "--ray=auto"]),
    (["quantize", "m.onnx", "--ray"], ["quantize", "m.onnx", "--ray"]),  # only search has it
])
def test_bare_ray_option_means_a_local_cluster(argv, expected):
    import deepshrink.cli.search_cmd  # noqa: F401 - registers --ray's bare value
    from deepshrink.cli._app import _complete_optional_values

    assert _complete_optional_values(argv) == expected


def test_ray_without_the_extra_one_line_exit_2(tmp_path, mlp_onnx, capsys, monkeypatch):
    import sys

    from deepshrink.cli import run_app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    rc = run_app(["search", str(mlp_onnx), "-d", DATA, "--max-drop", "1", "--ray", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'deepshrink[ray]'" in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and not (tmp_path / "o").exists()
    rc = run_app(["search", str(mlp_onnx), "-d", DATA, "--max-drop", "1", "--ray-workers", "2", "-o",
                  str(tmp_path / "o")])
    assert rc == 2 and "give --ray too" in capsys.readouterr().err


def test_a_max_drop_finer_than_one_held_out_sample_is_said(tmp_path, mlp_onnx):
    """180 held-out samples to choose on: one sample is 0.56 pt, so --max-drop 0.5 can only mean "none lost"; the
    verdict says so and how much held-out data would resolve the limit (400: 200 to choose on, 200 to report on)."""
    from deepshrink.search.runner import _resolution_warning

    res = ds.search(str(mlp_onnx), DATA, SearchConfig(max_drop=0.5, trials=1, repeats=0), tmp_path / "a",
                    eval_data=EVAL)
    [w] = [w for w in res.report["verdict"]["warnings"] if "one sample is" in w]
    assert "has 180 samples, so one sample is 0.56 pt, more than --max-drop 0.5" in w and "at least 400 " in w
    assert _resolution_warning(180, SearchConfig(max_drop=0.6)) is None
    assert _resolution_warning(200, SearchConfig(max_drop=0.5)) is None
    assert _resolution_warning(180, SearchConfig(target_cos=0.99)) is None
    assert _resolution_warning(180, SearchConfig(max_drop=0)) is None  # 0 already says "no sample lost"
