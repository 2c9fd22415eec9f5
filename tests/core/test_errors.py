"""One line from any exception, and no assert reachable from user input."""

import pytest

import deepshrink as ds
from deepshrink.errors import InputError, first_line


def test_first_line_never_fails():
    assert first_line(RuntimeError("\n\n  boom  \nstack\nmore")) == "boom"
    assert first_line(RuntimeError("")) == "RuntimeError"  # empty message: the type, not an IndexError
    assert first_line(ValueError("x" * 500), 10) == "x" * 9 + "…"  # cut, and marked as cut, within the limit
    # trial 15i: "…because your version o)" read as a typo; a cut ends at a word when one is near
    assert first_line("because your version of transformers is old", 25) == "because your version of…"
    assert first_line("") == ""


def test_saving_a_module_without_example_inputs_is_one_clear_error(tmp_path):
    from deepshrink.examples import DigitsMLP

    with pytest.raises(InputError, match="no example inputs .* --input-shape"):
        ds.save(ds.load(DigitsMLP()), tmp_path / "x.pt2")
    assert not list(tmp_path.iterdir())
