"""The one training loop shared by pruning fine-tune, QAT and distillation."""

from .trainer import (
    Callback,
    LengthGroupedSampler,
    Trainer,
    TrainResult,
    accuracy_of,
    batches_of,
    deterministic_default,
    deterministic_training,
)

__all__ = ["Callback", "LengthGroupedSampler", "Trainer", "TrainResult", "accuracy_of", "batches_of", "deterministic_default",
           "deterministic_training"]
