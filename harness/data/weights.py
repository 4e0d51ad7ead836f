"""Read a checkpoint file into a state dict with torch's safe unpickler, whatever wraps the tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from harness.errors import HarnessError
from harness.store.io import atomic_write, file_sha256

ACCEPTED_FILES = "accepted: a whole safetensors file or torch.save state dict (a copy cut short reads as this)"


def read_state_dict(path: Path, allowed: list[Any] = ()) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, a plain state dict, or one under ``"model"`` (DeiT/Swin releases) or ``"state_dict"``.

    ``allowed``: the non-tensor types a release is known to pickle beside its weights (training
    arguments, logging buffers), passed to ``torch.serialization.safe_globals``; nothing else loads.
    """
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise HarnessError(f"checkpoint {path} is empty (0 bytes); {ACCEPTED_FILES}")
    try:
        if path.suffix == ".safetensors":
            content = load_file(path)
        else:
            with torch.serialization.safe_globals(list(allowed)):
                content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any reader failure means the same thing to the user: not a weights file
        raise HarnessError(f"checkpoint {path} is unreadable ({_one_line(error)}); {ACCEPTED_FILES}") from error
    if isinstance(content, dict):
        content = content.get("model", content.get("state_dict", content))
    if not content or not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise HarnessError(f"checkpoint {path} holds no state dict (name -> tensor, possibly under 'model' or 'state_dict')")
    check_finite(content, path)
    return content


def check_finite(state_dict: dict[str, torch.Tensor], path: Path | str, shown: int = 3) -> None:
    """Refuse weights holding inf or NaN: they evaluate near chance and the blame falls on the calibration
    images (issue 31), so the file is named before any metric is computed from it."""
    counts = {name: int((~torch.isfinite(tensor)).sum()) for name, tensor in state_dict.items()
              if tensor.is_floating_point() or tensor.is_complex()}
    bad = [name for name, count in counts.items() if count]
    if bad:
        names = ", ".join(bad[:shown]) + (f" (+{len(bad) - shown} more tensors)" if len(bad) > shown else "")
        raise HarnessError(f"checkpoint {path}: {sum(counts.values())} non-finite values in {names}; "
                           "accepted: weights that are all finite numbers (a file saved from a trained model)")


def write_state_dict(path: Path, model: nn.Module) -> str:
    """``model``'s state dict as a safetensors file (atomically; no pickle); returns the file's sha256."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(path, lambda handle: handle.write(save(state)))
    return file_sha256(path, length=64)


def _one_line(error: Exception, limit: int = 200) -> str:
    """The reason alone: torch wraps a weights-only refusal in paragraphs of advice we do not want followed."""
    reason = str(error).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
    text = " ".join((reason or str(error)).split()).partition(". ")[0]  # the first sentence says what broke
    text = f"{text[:limit]}{'...' if len(text) > limit else ''}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
