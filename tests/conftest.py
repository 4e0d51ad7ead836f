import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer


@pytest.fixture(autouse=True, scope="session")
def isolated_caches(tmp_path_factory) -> Iterator[None]:
    """Tests never write into the user's harness cache (the imagenet task keeps decoded images there)
    and never reach the Hugging Face hub (tests of fetching stand in for its download function)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DFQ_HARNESS_CACHE", str(tmp_path_factory.mktemp("harness_cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


# the CI machine has 2 cores, more threads oversubscribe; DFQ_HARNESS_TEST_THREADS=1 checks another thread count
torch.set_num_threads(int(os.environ.get("DFQ_HARNESS_TEST_THREADS", "2")))


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=32,
                             depth=2, num_heads=2, qkv_bias=True).eval()


@pytest.fixture
def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=16,
                           depths=(2, 2), num_heads=(2, 2), window_size=4).eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny (often float64) models: steadier and several times faster than two
    contended threads on a shared 2-core machine; the previous count is restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def outside_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str, str], None]]:
    """``install(module, source, group)``: ``source`` as an installed outside package's plugin module (a distribution
    whose entry point in ``dfq_harness.<group>`` names it), found by the next discovery; gone after the test."""
    from harness.plugin import discovery

    installed = []

    def install(module: str, source: str, group: str = "methods") -> None:
        (tmp_path / f"{module}.py").write_text(source)
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[dfq_harness.{group}]\n{module} = {module}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(discovery, "_discovered", False)
        installed.append(module)

    yield install
    for module in installed:
        sys.modules.pop(module, None)

