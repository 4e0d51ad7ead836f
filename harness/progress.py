"""Progress bars for every long stage, switched off together by ``--no-progress``."""
from __future__ import annotations

from typing import Any, Iterable

from tqdm import tqdm

_enabled = True


def set_progress(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether bars are shown: worker processes are told, so ``--no-progress`` reaches them too."""
    return _enabled


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm`` with the harness-wide switch; inner bars should pass ``leave=False``."""
    kwargs["disable"] = kwargs.get("disable", False) or not _enabled
    return tqdm(iterable, **kwargs)
