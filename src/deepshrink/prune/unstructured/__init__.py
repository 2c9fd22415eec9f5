"""Unstructured pruning: magnitude (threshold / target sparsity, per layer or global),
gradual Zhu & Gupta schedules interleaved with fine-tuning, and N:M sparsity.

Masks are held with ``torch.nn.utils.prune`` (its reparametrisation keeps pruned weights at
zero through fine-tuning) and removed at the end, so the result is a plain module with zeros.
"""

from .magnitude import (
    GradualPruneCallback,
    HoldMasks,
    apply_masks,
    cubic_sparsity,
    magnitude_masks,
    nm_masks,
    remove_masks,
)

__all__ = ["GradualPruneCallback", "HoldMasks", "apply_masks", "cubic_sparsity", "magnitude_masks", "nm_masks", "remove_masks"]
