"""report.md / report.html from the 3-step example report and from degraded ones."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from deepshrink.report import write_reports
from deepshrink.report.render import render_html, render_markdown

_IMG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _pngs(page: str) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in _IMG.findall(page)]


@pytest.fixture(scope="module")
def written(tmp_path_factory, _example) -> tuple[dict, str, str, dict]:
    out = tmp_path_factory.mktemp("report-out")
    paths = write_reports(_example, out)
    return _example, paths["md"].read_text("utf-8"), paths["html"].read_text("utf-8"), paths


def test_files_written_atomically(written):
    _, _, _, paths = written
    assert set(paths) == {"md", "html"}
    assert sorted(p.name for p in paths["md"].parent.iterdir()) == ["report.html", "report.md"]  # no temp leftovers


def test_markdown_has_a_row_per_step_with_its_numbers(written):
    report, md, _, _ = written
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(rows) == 3
    assert report["steps"][2]["size_bytes"] < 0.4 * report["steps"][0]["size_bytes"]  # int8 file is really small
    for row, step in zip(rows, report["steps"], strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[:2] == [str(step["index"]), step["name"]]
        assert cells[3] == f"{step['size_bytes'] / 1000:.3g} kB"  # real file sizes, 10-100 kB
        assert cells[4] == "19,144"
        assert cells[5].startswith(f"{step['latency_ms']['median']:.3g} (")
        assert cells[7] == f"{100 * step['accuracy']:.2f} %"
    assert "| 2 | int8 |" in md and "⚠ slower" in rows[2] and "⚠ less-accurate" in rows[1]
    assert "| node_linear_MatMul_quant | Gemm → MatMulInteger | 18,432 | 32 → 8 | 0.0 % → 50.0 % |" in md
    assert "| node_conv2d | 0.0139 |" in md  # sensitivity table, most sensitive first
    assert md.index("node_conv2d | 0.0139") < md.index("node_linear | 0.0083")
    ratio = report["final"]["size_ratio"]
    assert f"| size | {ratio:.3g}× the original ({1 / ratio:.3g}× smaller) |" in md


def test_flags_are_prominent(written):
    _, md, page, _ = written
    warning = md.index("> [!WARNING]")
    assert warning < md.index("## Steps")
    assert "**step 2 int8: slower**: 1.28× slower than step 1" in md
    assert "**step 1 pruned: less-accurate**: accuracy 97.22 %" in md
    box = page.index('<div class="flags">')
    assert box < page.index("<h2>Steps</h2>")
    assert "<b>step 2 int8: slower</b>: 1.28× slower than step 1" in page[box:page.index("</div>", box)]
    assert page.count('<tr class="flagged">') == 2


def test_markdown_references_nothing_external(written):
    _, md, _, _ = written
    assert "](" not in md and "<img" not in md and "http" not in md


def test_html_is_self_contained_with_four_real_pngs(written):
    _, _, page, _ = written
    assert "http://" not in page and "https://" not in page
    assert not re.search(r'(?:src|href)\s*=\s*["\'](?!data:)', page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    images = _pngs(page)
    assert len(images) == 4  # steps, layers, histograms, sensitivity of step 1
    for img in images:
        assert img.shape[1] >= 1000 and img.shape[0] >= 200
        gray = img.mean(axis=2)
        assert gray.std() > 15  # not a flat image
        assert (gray < 200).mean() > 0.02  # ink on it: bars, text
        blue = (np.abs(img.astype(int) - (0x15, 0x65, 0xC0)).sum(axis=2) < 40).mean()
        assert blue > 0.001  # every figure draws the data in the "after" colour
    steps_fig = images[0]  # the slower step's latency bar is drawn in the flag colour
    assert (np.abs(steps_fig.astype(int) - (0xC6, 0x28, 0x28)).sum(axis=2) < 40).sum() > 500


def test_html_escapes_text(example_report):
    example_report["title"] = "<script>alert(1)</script>"
    example_report["steps"][2]["flags"][0]["message"] = 'bigger & "slower" <b>'
    page = render_html(example_report, figs=[])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "bigger &amp; &quot;slower&quot; &lt;b&gt;" in page


def test_missing_fields_do_not_crash(tmp_path, example_report):
    # no labels: no accuracy, no sensitivity, no layer data, no latency spread, no flags
    for s in example_report["steps"]:
        for key in ("accuracy", "sensitivity", "layers", "histograms", "flags", "details", "latency_ratio_spread"):
            s[key] = None
        s["latency_ms"] = {"median": s["latency_ms"]["median"]}
    example_report["final"]["accuracy_drop"] = None
    example_report["data"]["labels"] = False
    del example_report["environment"]
    paths = write_reports(example_report, tmp_path / "a")
    md, page = paths["md"].read_text("utf-8"), paths["html"].read_text("utf-8")
    assert "No step is slower, less accurate or bigger" in md and 'class="flags"' not in page
    row = next(line for line in md.splitlines() if line.startswith("| 2 | int8 |"))
    assert "| – |" in row and "0.9975 / 0.9861" in row and "0.262 |" in row
    assert "no labels (fidelity only)" in md and "## Layers" not in md and "## Sensitivity" not in md
    assert len(_pngs(page)) == 1  # only the per-step figure (with the cosine panel)


def test_bare_reports(tmp_path):
    paths = write_reports({}, tmp_path / "empty")
    assert paths["md"].read_text("utf-8").startswith("# deepshrink report")
    assert "<h1>deepshrink report</h1>" in paths["html"].read_text("utf-8")
    steps = [{"index": 0, "name": "original"}, {"index": 1, "name": "quantize", "size_bytes": None,
                                                "latency_ms": None, "flags": [{"kind": "bigger"}]}]
    md = render_markdown({"steps": steps, "final": None, "environment": None})
    assert "| 0 | original |" in md and "**step 1 quantize: bigger**" in md
    assert len(_pngs(render_html({"steps": steps}))) == 1


def test_layers_pair_by_name_then_size_then_order():
    from deepshrink.report.render import _match_layers

    before = [{"name": "a", "params": 10}, {"name": "b", "params": 10}, {"name": "c", "params": 5}]
    # 'b' keeps its name, 'a' is renamed (same size), 'c' renamed and resized (structured pruning)
    after = [{"name": "a_quant", "params": 10}, {"name": "b", "params": 10}, {"name": "c2", "params": 3}]
    assert [b["name"] for b, _ in _match_layers(before, after)] == ["a", "b", "c"]
    assert [b for b, _ in _match_layers(before, [{"name": "x", "params": 7}])] == [None]  # no guess by position

    # pruned through an ONNX import and quantized: every layer renamed and resized, the export listing the dense
    # layer first (trial t's table read "Gemm → Conv"); dynamic int8 makes the Gemm a MatMul
    before = [{"name": "stem", "op": "Conv", "params": 216}, {"name": "body", "op": "Conv", "params": 5184},
              {"name": "fc", "op": "Gemm", "params": 480}]
    after = [{"name": "fc_q", "op": "MatMul", "params": 360}, {"name": "c0_q", "op": "ConvInteger", "params": 162},
             {"name": "c1_q", "op": "QLinearConv", "params": 2916}]
    assert [b["name"] for b, _ in _match_layers(before, after)] == ["fc", "stem", "body"]
