"""Load OpenMMLab checkpoints with torch's safe unpickler and a short allowlist.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that refuses
checkpoints whose ``meta`` holds numpy scalars or mmengine's ``HistoryBuffer`` (whose pickled state
calls ``getattr`` for its statistics methods). Rather than turning safety off, the few types such
checkpoints carry are allowed by name, and ``getattr`` only for those methods.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from harness.data.mm.stack import require
from harness.data.weights import read_state_dict
from harness.errors import HarnessError


def _allowlist() -> list[Any]:
    HistoryBuffer = require("mmengine.logging").HistoryBuffer

    def history_buffer_method(owner: Any, name: str) -> Any:
        """The one ``getattr`` such checkpoints pickle: a HistoryBuffer's statistics methods, by name."""
        if owner is HistoryBuffer and not name.startswith("_") and callable(vars(HistoryBuffer).get(name)):
            return getattr(owner, name)
        raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) is outside the allowlist")

    scalar = np._core.multiarray.scalar
    reconstruct = np._core.multiarray._reconstruct
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")]
    # numpy 1 pickled these under numpy.core; numpy 2 keeps them in numpy._core.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtypes, HistoryBuffer,
            (history_buffer_method, "__builtin__.getattr"), (history_buffer_method, "builtins.getattr")]


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; any missing or unexpected key is an error naming the file."""
    state = read_state_dict(path, allowed=_allowlist())
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        detail = " ".join(str(error).split("\n\t")[1:2]) or str(error).splitlines()[0]
        raise HarnessError(f"checkpoint {path} does not match the model: {detail.strip()}") from None
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise HarnessError(f"checkpoint {path} does not match the model: {len(missing)} missing and "
                           f"{len(unexpected)} unexpected keys (e.g. {example!r})")
