"""``deepshrink search --ray`` (issue 14): the same search measured by 2 local Ray workers gives the same
trials and the byte-identical ``pareto.json`` as the sequential run with the same seed; a bad address is one
line and exit 2. Skipped without the ``ray`` extra.

One local Ray cluster (2 CPUs) is started by the search itself for the module's one Ray run (~10 s of the
file's time) and shut down after it; the test checks that no Ray process is left and that Ray wrote nothing
into the (temporary) home folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")
pytest.importorskip("ray")

import deepshrink as ds  # noqa: E402
from deepshrink.search import SearchConfig  # noqa: E402

DATA, EVAL = "digits:train", "digits:test"


def _ray_children() -> list[str]:
    import psutil

    names = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                names.append(" ".join(p.cmdline())[:120])
        except psutil.Error:
            continue
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlp_onnx):
    """The same untimed search (exact objectives: accuracy lost, size) sequentially and on 2 local Ray workers."""
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    home = tmp / "home"
    home.mkdir()
    # a temp folder of this test's own (another test run on the machine may start a cluster too), short:
    # Ray's socket paths under it must stay within AF_UNIX's 107 bytes
    private_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    base = {"max_drop": 1.0, "trials": 10, "repeats": 0, "seed": 2, "threads": 1}
    seq = ds.search(str(mlp_onnx), DATA, SearchConfig(**base), tmp / "seq", eval_data=EVAL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))  # Ray must write nothing there (no ~/.ray/auth_token, no usage config)
        mp.setenv("TMPDIR", str(private_tmp))
        mp.setattr(tempfile, "tempdir", str(private_tmp))
        par = ds.search(str(mlp_onnx), DATA, SearchConfig(**base, ray="local", ray_workers=2), tmp / "ray",
                        eval_data=EVAL)
    assert not ray.is_initialized()
    left = _ray_children()
    for _ in range(50):  # ray.shutdown() ends its processes; give the OS a moment to reap them
        if not left:
            break
        time.sleep(0.2)
        left = _ray_children()
    new_tmp = set(os.listdir(private_tmp))
    shutil.rmtree(private_tmp, ignore_errors=True)
    return seq, par, home, left, new_tmp


def test_ray_run_gives_the_same_pareto_json(runs):
    seq, par, *_ = runs
    assert (par.out_dir / "pareto.json").read_bytes() == (seq.out_dir / "pareto.json").read_bytes()
    assert (par.out_dir / "best.onnx").read_bytes() == (seq.out_dir / "best.onnx").read_bytes()

    def trials(report):
        return [{k: v for k, v in c.items() if k != "build_s"} for c in report["candidates"]]

    # every candidate: same trial number, origin, per-layer choices, bytes (sha256) and held-out scores
    assert trials(par.report) == trials(seq.report)
    assert par.report["search"]["built"] == seq.report["search"]["built"] > 3
    assert (par.report["search"]["runner"], par.report["search"]["workers"]) == ("ray", 2)
    assert (seq.report["search"]["runner"], seq.report["search"]["workers"]) == ("sequential", 1)


def test_local_cluster_is_gone_and_wrote_nothing_into_home(runs):
    *_, home, left, new_tmp = runs
    assert left == []
    assert not (home / ".ray").exists()
    assert not [n for n in new_tmp if n.startswith("ds-ray-")]  # the cluster's temp folder is removed


@pytest.mark.parametrize(("address", "says"), [("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
                                               ("not an address", "is not a Ray address"),
                                               ("ray://127.0.0.1:99999", "is not a Ray address")])
def test_bad_address_one_line_exit_2_nothing_written(tmp_path, mlp_onnx, capsys, address, says):
    from deepshrink.cli import run_app

    out = tmp_path / "out"
    rc = run_app(["search", str(mlp_onnx), "-d", DATA, "--max-drop", "1", "--ray", address, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert says in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
    assert not out.exists()  # checked before anything is loaded (ray.init alone waits minutes on a dead port)


def test_report_records_the_runner(runs):
    _, par, *_ = runs
    cfg = json.loads((par.out_dir / "report.json").read_text())["config"]
    assert (cfg["ray"], cfg["ray_workers"], cfg["proposal_batch"]) == ("local", 2, 4)
