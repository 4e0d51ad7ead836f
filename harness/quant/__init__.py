"""Fake quantization (spec README §3): arithmetic, quantizer modules, model conversion."""
