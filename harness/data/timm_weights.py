"""Weights as ``timm.create_model(name, pretrained=True)`` gets them: the hub cache, else the hub, else a local file.

Without ``--checkpoint`` the model's default file is taken from the local Hugging Face hub cache or,
where the hub is reachable (``HF_HUB_OFFLINE`` unset), downloaded into it through
``huggingface_hub`` as timm does (``model.safetensors``, else ``pytorch_model.bin``; the hub client
shows its progress bar and checks the file against the hub's checksum). Offline, a missing file is
one clear error naming where it was expected. Either way the file is then loaded strictly.

Shared by the imagenet task and the class source of detection/segmentation tasks (docs/methods.md,
Class sources).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from huggingface_hub import constants, errors, hf_hub_download, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from timm.models import get_pretrained_cfg
from torch import nn

from harness.data.weights import read_state_dict
from harness.errors import HarnessError

HUB_FILENAME = "model.safetensors"  # what timm downloads for a pretrained model with an hf_hub_id
HUB_FALLBACK_FILENAME = "pytorch_model.bin"  # timm's default name, used when a repository has no safetensors
# a file the repository does not have (older huggingface_hub names it EntryNotFoundError)
_NOT_IN_REPOSITORY = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE``, read now (huggingface_hub reads it once, at import)."""
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_checkpoint(model_name: str, instead: str = "--checkpoint FILE") -> Path:
    """The file ``timm.create_model(name, pretrained=True)`` would load: cached, else fetched unless offline.

    ``instead``: the option that passes a local file, named in the errors.
    """
    config = get_pretrained_cfg(model_name)
    repo_id, _, revision = config.hf_hub_id.partition("@")
    filenames = [config.hf_hub_filename] if getattr(config, "hf_hub_filename", None) else [HUB_FILENAME,
                                                                                           HUB_FALLBACK_FILENAME]
    cache_dir = Path(constants.HF_HUB_CACHE)
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    folder = cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
    expected = folder / "snapshots" / "<commit>" / filenames[0]
    if hub_offline():
        raise HarnessError(
            f"no weights for {model_name}: expected {filenames[0]} of {repo_id} in the Hugging Face hub cache, at "
            f"{expected} (HF_HUB_OFFLINE is set; fetch it where there is network, e.g. `hf download {repo_id} "
            f"{filenames[0]}`), or pass {instead}")
    for filename in filenames:
        print(f"fetching {filename} of {repo_id} from the Hugging Face hub (the weights timm's pretrained=True "
              f"loads) into {cache_dir}", file=sys.stderr)
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
        except errors.LocalEntryNotFoundError as error:  # no connection: the hub is not reachable from here
            raise _fetch_failed(model_name, repo_id, filename, expected, error, instead) from error
        except _NOT_IN_REPOSITORY:
            continue
        except (errors.HfHubHTTPError, OSError) as error:
            raise _fetch_failed(model_name, repo_id, filename, expected, error, instead) from error
    raise HarnessError(f"no weights for {model_name}: {repo_id} on the Hugging Face hub has none of "
                       f"{', '.join(filenames)}; pass {instead}")


def _fetch_failed(model_name: str, repo_id: str, filename: str, expected: Path, error: Exception,
                  instead: str) -> HarnessError:
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return HarnessError(f"no weights for {model_name}: fetching {filename} of {repo_id} from the Hugging Face hub "
                        f"failed ({type(error).__name__}: {reason}); put it at {expected} (e.g. `hf download "
                        f"{repo_id} {filename}` where there is network), or pass {instead}")


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
        shapes = [f"{key} has shape {tuple(state_dict[key].shape)} in the file, {tuple(expected[key].shape)} in the "
                  "model" for key in wrong]
        raise HarnessError(f"checkpoint {path} does not fit {model_name}: {_first(shapes)}")
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
    """The first differences, and how many more: enough to tell a wrong model from a renamed layer."""
    shown = ", ".join(keys[:count]) or "none"
    return f"{shown} (+{len(keys) - count} more)" if len(keys) > count else shown
