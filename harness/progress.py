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


# Iterations between loss read-outs on a synthesis bar. Reading a value off an accelerator waits for
# every queued kernel, so a read per iteration would stop the host from running ahead of the device.
LOSS_DISPLAY_EVERY = 50


def show_losses(bar: tqdm, step: int, losses: dict[str, Any], spec: str = ".3f",
                every: int = LOSS_DISPLAY_EVERY) -> None:
    """Put ``losses`` (tensors) on ``bar`` at the first step and every ``every`` steps after, not more often."""
    if step % every == 0:
        bar.set_postfix({name: f"{value.item():{spec}}" for name, value in losses.items()}, refresh=False)
