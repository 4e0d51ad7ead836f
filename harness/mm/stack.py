"""Import the optional OpenMMLab stack, or say in one line how to install it."""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from types import ModuleType
from typing import Iterator

from harness.errors import HarnessError

INSTALL_HINT = "install the `detseg` extra with scripts/install_detseg.sh (mmcv 2.1.0 with ops, mmdet 3.3.0, mmseg 1.2.2)"


def require(library: str) -> ModuleType:
    """``library`` imported (with mmcv's compiled ops, which mmdet and mmseg load eagerly)."""
    try:
        with warnings.catch_warnings():  # mmengine 0.10.7 imports pkg_resources, which warns on every start
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return importlib.import_module(library)
    except ImportError as error:
        raise HarnessError(f"{library} is not usable ({error}); {INSTALL_HINT}") from None


def available() -> str | None:
    """None when mmdet and mmseg import, otherwise the reason (for tests that skip without the extra)."""
    try:
        for library in ("mmcv.ops", "mmdet.utils", "mmseg.utils"):
            require(library)
    except HarnessError as error:
        return str(error)
    return None


def skip_without_stack() -> None:
    """For ``conformance_setup``: the kit skips (with the reason) where the optional stack is absent."""
    reason = available()
    if reason is not None:
        from harness.conformance import ConformanceSkip

        raise ConformanceSkip(reason)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence pycocotools' prints and mmengine's INFO logs (the harness reports its own progress and metrics)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
