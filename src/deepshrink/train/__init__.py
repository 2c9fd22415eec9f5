"""The one training loop shared by pruning fine-tune, QAT and distillation."""

from .trainer import (
    BATCHNORM_RECALIBRATION_SAMPLES,
    Callback,
    LengthGroupedSampler,
    Trainer,
    TrainResult,
    accuracy_of,
    batches_of,
    deterministic_default,
    deterministic_training,
    frozen_batchnorms,
    native_bf16,
    recalibrate_frozen_batchnorm,
)

__all__ = ["BATCHNORM_RECALIBRATION_SAMPLES", "Callback", "LengthGroupedSampler", "Trainer", "TrainResult", "accuracy_of", "batches_of", "deterministic_default",
           "deterministic_training", "frozen_batchnorms", "native_bf16", "recalibrate_frozen_batchnorm"]
