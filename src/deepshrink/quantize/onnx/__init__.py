"""ONNX deployment of quantization: ONNX Runtime's quantizers driven per layer, graph normalisation
before them, tied weights, SmoothQuant folding, GPTQ/RTN weight-only packing, QAT export, the
per-layer sensitivity and the ``auto`` search. The torch-side math (quantizers, observers,
codebooks, QAT) lives one level up in ``deepshrink.quantize``."""
