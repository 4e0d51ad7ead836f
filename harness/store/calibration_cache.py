"""Cached calibration sets of bit-independent generators (docs/results.md, Caches are validated on read): safetensors
files (tensors) with their metadata as JSON inside, so reading a cache never unpickles anything and a shared
results folder cannot run code; each is checked against the digest and shapes written with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from harness.plugin.method import CalibrationSet
from harness.plugin.task import ImagePrior
from harness.store.io import atomic_write
from harness.store.schema import fields, finite_number, integer, list_of, nullable, number_within, shown, text

CALIBRATION_SUFFIX = ".safetensors"


def _input_size(value: Any, where: str) -> str | None:
    """A prior's ``(C, H, W)``: three positive integers, the shape every cached image must have."""
    if (problem := list_of(integer)(value, where)) is not None:
        return problem
    return None if len(value) == 3 and min(value) > 0 else f"{where} is {shown(value)}, expected [channels, height, width]"


_COMPONENT = fields({"version": text, "digest": text}, required=("version", "digest"))
# the header's ``meta`` as harness.run.worker writes it and as the worker, the gallery and exports read it
CALIBRATION_META = fields({
    "generator": text, "model": text, "seed": integer, "options": fields({}),
    "prior": fields({"input_size": _input_size, "mean": list_of(finite_number), "std": list_of(finite_number),
                     "num_classes": nullable(integer)}, required=("input_size", "mean", "std", "num_classes")),
    "code": fields({"generator": _COMPONENT, "task": _COMPONENT}, required=("generator", "task")),
    "generate_seconds": number_within(0, math.inf),
}, required=("generator", "model", "seed", "options", "prior", "code", "generate_seconds"))


@dataclasses.dataclass
class CachedCalibration:
    """A cached calibration set and what made it: generator, model, seed, options, prior, code, seconds."""

    path: Path
    calibration: CalibrationSet
    meta: dict[str, Any]

    @property
    def prior(self) -> ImagePrior:
        prior = self.meta["prior"]
        return ImagePrior(input_size=tuple(prior["input_size"]), mean=tuple(prior["mean"]), std=tuple(prior["std"]),
                          num_classes=prior["num_classes"])


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of each tensor's name, dtype, shape and bytes: images altered under an intact header
    (zeroed, another set's) no longer match the digest written beside them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_calibration(path: Path, calibration: CalibrationSet, meta: dict[str, Any]) -> None:
    """Images (and labels) as safetensors; ``meta``, the set's info and the tensors' digest as JSON in the header."""
    tensors = {"images": calibration.images.detach().cpu().contiguous()}
    if calibration.labels is not None:
        tensors["labels"] = calibration.labels.detach().cpu().contiguous()
    header = {"meta": json.dumps(meta, sort_keys=True), "info": json.dumps(calibration.info, sort_keys=True),
              "digest": tensor_digest(tensors)}
    atomic_write(path, lambda handle: handle.write(save(tensors, metadata=header)))


def read_calibration(path: Path) -> CachedCalibration | None:
    """A usable cache entry, or None when absent or not usable (:func:`load_calibration` says why)."""
    return load_calibration(path)[0]


def load_calibration(path: Path, prior: ImagePrior | None = None) -> tuple[CachedCalibration | None, str | None]:
    """A cached calibration set: ``(entry, None)`` when usable, ``(None, why)`` when not, ``(None, None)`` when absent.

    Usable means what :func:`write_calibration` wrote, unchanged: a header of the declared shape
    (:data:`CALIBRATION_META`), tensors matching its digest, finite images of the prior's shape (the
    task's ``prior`` where given, else the header's) and one label per image. A set without a digest
    predates digests and cannot be checked, so it is not usable either (docs/results.md).
    """
    if not path.exists():
        return None, None
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, SafetensorError, ValueError) as error:
        return None, f"not a safetensors file ({str(error).strip()[:60] or type(error).__name__}; torn or replaced)"
    meta, info, problem = _calibration_header(header)
    if problem is None and header["digest"] != tensor_digest(tensors):
        problem = "its tensors differ from the digest in its header (altered images or labels)"
    entry = None if problem is not None else CachedCalibration(path, CalibrationSet(
        images=tensors.get("images"), labels=tensors.get("labels"), info=info), meta)
    if entry is not None:
        problem = _calibration_problem(entry, prior or entry.prior)
    return (None, problem) if problem is not None else (entry, None)


def _calibration_header(header: dict[str, str]) -> tuple[Any, Any, str | None]:
    """The header's ``meta`` and ``info``, or why the header is not what :func:`write_calibration` writes."""
    if "digest" not in header:
        return None, None, "no digest of its tensors in its header (written before digests were stored)"
    try:
        meta, info = json.loads(header["meta"]), json.loads(header["info"])
    except (KeyError, ValueError):
        return None, None, "its header's meta or info is missing or not valid JSON"
    if (problem := CALIBRATION_META(meta, "meta")) is not None:
        return None, None, problem
    return meta, info, None if isinstance(info, dict) else f"info is {shown(info)}, expected a mapping"


def _calibration_problem(entry: CachedCalibration, prior: ImagePrior) -> str | None:
    """Why a set whose header and digest hold cannot calibrate a model of ``prior``: shapes, values, labels."""
    images, labels = entry.calibration.images, entry.calibration.labels
    if images is None or not images.is_floating_point() or images.ndim != 4 or images.shape[0] == 0:
        return f"images {_described(images)}, expected a floating (N, C, H, W) tensor"
    if tuple(images.shape[1:]) != tuple(prior.input_size):
        return f"images of shape {tuple(images.shape[1:])}, expected the prior's {tuple(prior.input_size)}"
    if entry.prior != prior:
        return f"its header's prior {entry.prior} differs from the task's {prior}"
    if not len(prior.mean) == len(prior.std) == prior.input_size[0]:  # de-normalizing (the gallery) needs one per channel
        return f"meta.prior has {len(prior.mean)} means and {len(prior.std)} stds for {prior.input_size[0]} channels"
    if not torch.isfinite(images).all():
        return "images hold NaN or infinite values"
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != images.shape[:1]):
        return f"labels {_described(labels)}, expected one integer label for each of the {images.shape[0]} images"
    return None


def _described(tensor: torch.Tensor | None) -> str:
    return "missing" if tensor is None else f"{tensor.dtype} of shape {tuple(tensor.shape)}"
