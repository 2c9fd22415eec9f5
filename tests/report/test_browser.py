"""report.html as a browser draws it: Debian's chromium, headless, takes a screenshot.

Skipped where ``chromium`` is not on PATH (``apt-get install -y chromium``; the Makefile
installs it best-effort)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deepshrink.report.render import render_html

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (apt-get install -y chromium)")

_PLOT_BLUE, _FLAG_RED = (0x15, 0x65, 0xC0), (0xC6, 0x28, 0x28)


def _screenshot(page: str, tmp: Path, name: str) -> np.ndarray:
    from PIL import Image

    html, shot = tmp / f"{name}.html", tmp / f"{name}.png"
    html.write_text(page, "utf-8")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _share(img: np.ndarray, rgb: tuple[int, int, int]) -> float:
    return float((np.abs(img - rgb).sum(axis=2) < 40).mean())


def test_chromium_draws_the_report_with_its_plots(tmp_path, example_report):
    full = _screenshot(render_html(example_report), tmp_path, "full")
    bare = _screenshot(render_html(example_report, figs=[]), tmp_path, "bare")  # same page, no figures
    assert full.shape[:2] == (2000, 1280)
    gray = full.mean(axis=2)
    assert gray.std() > 30 and (gray < 128).mean() > 0.01  # not blank: text and plots are drawn
    assert _share(full, _FLAG_RED) > 0.001  # the flags box border / the slower step's red bar
    # the bars in the plots are the only large blue areas: present with figures, absent without
    assert _share(full, _PLOT_BLUE) > 0.01
    assert _share(bare, _PLOT_BLUE) < 0.001
    rows = np.flatnonzero((np.abs(full - _PLOT_BLUE).sum(axis=2) < 40).sum(axis=1) > 50)
    assert rows.min() > 600  # plots come after the flags and the steps table
