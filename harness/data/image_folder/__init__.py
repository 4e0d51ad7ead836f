"""Classification tasks on timm models and a class-folder data set (``ROOT/<split>/<class>/<image>``):
the base task (:mod:`.task`), the folder reader and timm transform (:mod:`.data`) and the decoded-image
cache shared by evaluations (:mod:`.cache`). docs/plugins.md, Image-folder classification tasks."""
from __future__ import annotations

from harness.data.image_folder.task import ImageFolderOptions, ImageFolderTask

__all__ = ["ImageFolderOptions", "ImageFolderTask"]
