"""The optional OpenMMLab stack: a missing library is a one-line error that says how to install it."""
import pytest

from harness.data.mm import stack
from harness.errors import HarnessError
from harness.plugin.registry import TASKS


def test_a_missing_library_names_the_install_script(monkeypatch):
    with pytest.raises(HarnessError) as error:
        stack.require("mmdet_that_is_not_installed")
    message = str(error.value)
    assert "mmdet_that_is_not_installed is not usable" in message and "scripts/install_detseg.sh" in message
    assert "\n" not in message


def test_tasks_are_listed_and_refuse_work_without_the_stack(monkeypatch):
    """`list` needs no mmdet; building a model without it fails with the hint, not a traceback."""
    task_class = TASKS.get("coco")
    monkeypatch.setattr(stack.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    coco = task_class(task_class.Options(checkpoint="/nonexistent.pth"))
    assert "mask_rcnn_swin_t" in coco.model_names
    with pytest.raises(HarnessError, match="install the `detseg` extra"):
        coco.load_model("mask_rcnn_swin_t")
    assert stack.available() is not None
