"""native_output_silenced catches what native code writes to descriptors 1 and 2, and restores them."""

from __future__ import annotations

import os

from deepshrink.core.quiet import native_output_silenced


def test_native_writes_are_captured_and_descriptors_restored(capfd):
    with native_output_silenced() as captured:
        os.write(1, b"graph(%x : Float(2, 3)) dump\n")
        os.write(2, b"native warning\n")
    os.write(1, b"after\n")
    out, err = capfd.readouterr()
    assert captured == ["graph(%x : Float(2, 3)) dump\nnative warning\n"]
    assert out == "after\n" and err == ""


def test_restored_after_an_exception(capfd):
    try:
        with native_output_silenced():
            os.write(1, b"lost\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"visible\n")
    assert capfd.readouterr().err == "visible\n"
