"""Measurements taken on the artifact: size, parameters, FLOPs, latency, accuracy, fidelity."""

from ..convert.parity import OutputDiff, compare_outputs
from .latency import LatencyStats, cpu_flags, measure_latency
from .metrics import accuracy, fidelity, kl_divergence
from .size import file_size, nonzero_count, param_count, weight_bytes

__all__ = [
    "OutputDiff", "compare_outputs", "LatencyStats", "measure_latency", "cpu_flags", "accuracy", "fidelity",
    "kl_divergence", "file_size", "param_count", "nonzero_count", "weight_bytes", "bench", "info",
]


def __getattr__(name: str):  # heavy pieces on demand
    if name == "bench":
        from .bench import bench

        return bench
    if name == "info":
        from .info import info

        return info
    if name == "flops":
        from .flops import flops

        return flops
    raise AttributeError(name)
