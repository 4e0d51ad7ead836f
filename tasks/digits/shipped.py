"""The digits miniature ViTs ship with the package: every machine evaluates the same weights.

Training is not bit-reproducible across CPUs (the same recipe gave seed 0 a test top-1 of 97.04 % on
one machine and 95.93 % on another), so the task never trains: it loads ``weights/*.safetensors``
and checks each file against the sha256 in ``weights/manifest.json``, which also records how and where
the file was trained. ``python -m tasks.digits.train`` remakes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.api import HarnessError
from harness.api.data import file_sha256, write_json

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_SEEDS = {"digits_vit_seed0": 0, "digits_vit_seed1": 1}


def read_manifest() -> dict[str, dict[str, Any]]:
    path = WEIGHTS_DIR / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(manifest: dict[str, dict[str, Any]]) -> None:
    write_json(WEIGHTS_DIR / "manifest.json", manifest)


def shipped_weights(model_name: str) -> tuple[Path, str]:
    """The shipped file of ``model_name`` and its sha256, refused if it is not the file the manifest names."""
    manifest = read_manifest()
    if model_name not in manifest:
        raise HarnessError(f"no shipped weights for {model_name!r} in {WEIGHTS_DIR}; accepted: {', '.join(manifest)}")
    entry = manifest[model_name]
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise HarnessError(f"shipped weights {path} are missing; reinstall the package or run "
                           f"`python -m tasks.digits.train --ship`")
    digest = file_sha256(path, length=64)
    if digest != entry["sha256"]:
        raise HarnessError(f"shipped weights {path} have sha256 {digest[:16]}..., the manifest says "
                           f"{entry['sha256'][:16]}...; reinstall the package or run `python -m tasks.digits.train --ship`")
    return path, digest
