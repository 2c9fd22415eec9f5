"""The one training loop shared by pruning fine-tune, QAT and distillation."""

from .trainer import Callback, Trainer, TrainResult, accuracy_of, batches_of

__all__ = ["Callback", "Trainer", "TrainResult", "accuracy_of", "batches_of"]
