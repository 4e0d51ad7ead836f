"""Model configs and their weights: mmengine configs shipped in the mmdet/mmseg packages or local files."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from harness.data.mm.stack import require
from harness.errors import HarnessError


def config_path(reference: str) -> Path:
    """``'mmdet::swin/x.py'`` -> the file in the installed package's ``.mim/configs``; anything else is a path."""
    package, sep, relative = reference.partition("::")
    if not sep:
        path = Path(reference).expanduser()
    else:
        path = Path(require(package).__file__).parent / ".mim" / "configs" / relative
    if not path.is_file():
        raise HarnessError(f"model config not found: {path}")
    return path


def load_config(reference: str):
    """The parsed mmengine ``Config`` (``_base_`` files resolved, ``mmdet::`` bases included)."""
    path = config_path(reference)
    try:
        return require("mmengine.config").Config.fromfile(str(path))
    except Exception as error:
        raise HarnessError(f"model config {path} could not be parsed: {type(error).__name__}: {error}") from None


def cached_weights(reference: str) -> tuple[Path | None, str | None]:
    """Where mmengine's downloader would have cached the config's released weights, and their URL.

    The package's metafile beside the config (mmdet's ``metafile.yml``, mmseg's ``metafile.yaml``)
    names the release; mmengine saves downloads in ``torch.hub`` 's ``checkpoints`` folder under the
    URL's file name. (None, None) when no release is listed.
    """
    package, sep, relative = reference.partition("::")
    if not sep:
        return None, None
    metafile = next((path for path in (config_path(reference).parent / f"metafile.{suffix}" for suffix in ("yml", "yaml"))
                     if path.is_file()), None)
    if metafile is None:
        return None, None
    entries = (yaml.safe_load(metafile.read_text()) or {}).get("Models", [])
    url = next((entry.get("Weights") for entry in entries if entry.get("Config") == f"configs/{relative}"), None)
    if not url:
        return None, None
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url
