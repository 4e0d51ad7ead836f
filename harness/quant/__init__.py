"""Fake quantization (docs/quantizer.md): arithmetic, quantizer modules, model conversion."""
