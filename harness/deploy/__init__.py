"""Deployment: a calibrated model exported to ONNX with QuantizeLinear / DequantizeLinear pairs and measured
against its simulation (``export``), and a finished cell exported from its record (``cell_export``)."""
