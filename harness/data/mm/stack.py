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
from harness.plugin.task_setup import ConformanceSkip

INSTALL_HINT = "install the `detseg` extra with scripts/install_detseg.sh (mmcv 2.1.0 with ops, mmdet 3.3.0, mmseg 1.2.2)"

# (message, module) of the stack's own deprecation notices, none of them about anything a user of the
# harness wrote or can change: mmengine 0.10.7 imports pkg_resources (deprecated by setuptools) whenever
# it resolves an ``mmdet::``/``mmseg::`` config, from its own module or through importlib.reload, so
# that one is matched by message alone; mmseg 1.2.2 warns about its own shipped configs (the
# ``reduce_zero_label`` of ADE20K's pipeline, the training loss's ``avg_non_ignore``) and its own builder.
LIBRARY_NOTICES = (
    (r"pkg_resources is deprecated as an API", ""),
    (r"``build_loss`` would be deprecated soon", r"mmseg\.models\.builder"),
    (r"Default ``avg_non_ignore`` is False", r"mmseg\.models\.losses\.cross_entropy_loss"),
    (r"`reduce_zero_label` will be deprecated", r"mmseg\.datasets\.transforms\.loading"),
)
_notices_silenced = False


def silence_library_notices() -> None:
    """Ignore exactly :data:`LIBRARY_NOTICES` for the rest of the process (every other warning still shows)."""
    global _notices_silenced
    if not _notices_silenced:
        for message, module in LIBRARY_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)
        _notices_silenced = True


def require(library: str) -> ModuleType:
    """``library`` imported (with mmcv's compiled ops, which mmdet and mmseg load eagerly).

    The stack's deprecation notices are silenced from here on: they would otherwise print on every
    run, also from lazy imports long after this one.
    """
    silence_library_notices()
    try:
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
