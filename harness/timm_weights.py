"""Offline weights of timm classifiers: a local checkpoint file, or the model's default file in the hub cache.

Shared by the imagenet task and the class source of detection/segmentation tasks (docs/methods.md,
Class sources).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from timm.models import get_pretrained_cfg
from torch import nn

from harness.errors import HarnessError
from harness.weights import read_state_dict

HUB_FILENAME = "model.safetensors"  # what timm downloads for a pretrained model with an hf_hub_id


def hub_checkpoint(model_name: str, instead: str = "--checkpoint FILE") -> Path:
    """The file ``timm.create_model(name, pretrained=True)`` would download, if it is cached; no network.

    ``instead``: the option that passes a local file, named in the error when the cache lacks it.
    """
    repo_id = get_pretrained_cfg(model_name).hf_hub_id
    cache_dir = Path(constants.HF_HUB_CACHE)
    found = try_to_load_from_cache(repo_id, HUB_FILENAME, cache_dir=cache_dir)
    if isinstance(found, str):
        return Path(found)
    expected = cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / "<commit>" / HUB_FILENAME
    raise HarnessError(
        f"no weights for {model_name}: expected {HUB_FILENAME} of {repo_id} in the Hugging Face hub cache, at {expected} "
        f"(fetch it where there is network, e.g. `hf download {repo_id} {HUB_FILENAME}`), or pass {instead}"
    )


def load_weights(model: nn.Module, model_name: str, path: Path) -> None:
    """Strict loading: a file made for another model must fail loudly rather than evaluate near chance."""
    state_dict = read_state_dict(path, allowed=[argparse.Namespace])  # DeiT's training script saves its args
    expected = model.state_dict()
    if state_dict.keys() != expected.keys():
        state_dict = _timm_layout(model, state_dict)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise HarnessError(f"checkpoint {path} does not fit {model_name}: "
                           f"missing keys {_first(missing)}; unexpected keys {_first(unexpected)}")
    wrong = [key for key in expected if state_dict[key].shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        raise HarnessError(f"checkpoint {path} does not fit {model_name}: {key} has shape "
                           f"{tuple(state_dict[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
                           + (f" ({len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else ""))
    model.load_state_dict(state_dict)


def _timm_layout(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames other releases need (official Swin downsamples at a stage's end), by timm's own filter."""
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is None:
        return state_dict
    try:
        return convert(state_dict, model)
    except Exception:  # not a layout timm knows: the key check that follows names what differs
        return state_dict


def _first(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count]) or "none"
    return f"{shown} (+{len(keys) - count} more)" if len(keys) > count else shown
