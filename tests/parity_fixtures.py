"""The fixtures written by the parity scripts in benchmarks/ from the authors' code (docs/methods.md,
each method's Parity): one ``NAME.json`` (model class and configuration, the authors' figures) and one
``NAME.safetensors`` (weights, calibration and evaluation images, the authors' logits) per model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from calibration import calibrate
from harness.plugin.method import Calibrator
from harness.quant.convert import QuantConfig

MODEL_CLASSES = {"VisionTransformer": VisionTransformer, "SwinTransformer": SwinTransformer}


def load_fixture(fixture: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The fixture's description and its tensors (``fixture`` without a suffix)."""
    meta = json.loads(fixture.with_suffix(".json").read_text())
    return meta, load_file(str(fixture.with_suffix(".safetensors")))


def calibrated_on_fixture(meta: dict, tensors: dict[str, torch.Tensor], bits: str, calibrator: Calibrator,
                          config: QuantConfig | None = None,
                          model_classes: dict[str, type[torch.nn.Module]] = MODEL_CLASSES) -> torch.nn.Module:
    """The fixture's model (its class looked up by name in ``model_classes``) with its weights, quantized at
    ``bits`` and calibrated on its calibration images, all in float64 (the authors' side ran in float64 too)."""
    model = model_classes[meta["timm_class"]](**meta["kwargs"]).eval()
    model.load_state_dict({k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")})
    return calibrate(model.double(), bits, calibrator, tensors["calibration_images"].double(), config)[0]
