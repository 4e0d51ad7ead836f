"""The imagenet task on a tiny ImageNet-layout folder of scikit-image photos and random-init timm models."""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torchvision import transforms

from harness.data import timm_weights as weights
from harness.data.image_folder import cache
from harness.data.image_folder.data import eval_transform
from harness.errors import HarnessError
from tasks.imagenet import ImageNetOptions, ImageNetTask

MODEL = "deit_tiny_patch16_224"
labelled_images = ImageNetTask().labelled_images  # a split folder's (path, synset index) pairs
# classes 0, 1 and 999 of timm's synset list: the 999 folder proves labels are not folder ranks
VAL = {"n01440764": ["astronaut.JPEG", "coffee.JPEG"], "n01443537": ["chelsea.jpg"], "n15075141": ["camera.png"]}
TRAIN = {"n01440764": ["rocket.JPEG", "coins.JPEG"], "n01443537": ["immunohistochemistry.JPEG", "moon.JPEG"],
         "n15075141": ["page.JPEG", "hubble_deep_field.JPEG"]}


def _write_photo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = getattr(skimage.data, path.stem)()  # camera, coins, moon, page are grayscale
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix == ".png" else "JPEG")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation, which stalls badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    for wnid, names in VAL.items():
        for name in names:
            _write_photo(root / "val" / wnid / name)
    (root / "val" / "n01440764" / "notes.txt").write_text("not an image")
    for wnid, names in TRAIN.items():
        for name in names:
            _write_photo(root / "train" / wnid / name)
    return root


@pytest.fixture(scope="module")
def source_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False).eval()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache (the constant is read at import, hence both)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _task(root: Path | None = None, checkpoint: Path | None = None, **options) -> ImageNetTask:
    options = {"batch_size": 3, "num_workers": 0, **options}
    return ImageNetTask(ImageNetOptions(data_root=str(root) if root else None,
                                        checkpoint=str(checkpoint) if checkpoint else None, **options))


def _biased_model(scores: dict[int, float]) -> torch.nn.Module:
    """Logits = a fixed bias whatever the image: predictions known in advance."""
    model = timm.create_model(MODEL, pretrained=False).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for index, score in scores.items():
            model.head.bias[index] = score
    return model


def _sample_input() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.mark.parametrize("layout", ["deit_release", "deit_training_script", "plain", "state_dict", "safetensors"])
def test_checkpoint_layouts_load_the_same_weights(layout, source_model, tmp_path):
    state_dict = source_model.state_dict()
    path = tmp_path / ("weights.safetensors" if layout == "safetensors" else "weights.pth")
    if layout == "safetensors":
        save_file(state_dict, path)
    else:
        torch.save({
            "deit_release": {"model": state_dict},
            "deit_training_script": {"model": state_dict, "epoch": 299, "args": argparse.Namespace(lr=5e-4)},
            "plain": state_dict,
            "state_dict": {"state_dict": state_dict},
        }[layout], path)
    task = _task(checkpoint=path)
    loaded = task.load_model(MODEL)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(_sample_input()), source_model(_sample_input()))
    expected_id = _sha16(path)
    assert task.weights_id(MODEL) == expected_id
    path.unlink()  # the id is cached per instance: the file is not hashed again
    assert task.weights_id(MODEL) == expected_id


def test_official_swin_release_layout_is_converted(tmp_path):
    """Official Swin files downsample at a stage's end and name the head ``head``; timm's filter renames them."""
    torch.manual_seed(0)
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    release = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
               .replace("head.fc.", "head."): value for key, value in source.state_dict().items()}
    release["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"model": release}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    loaded = _task(checkpoint=tmp_path / "swin_tiny_patch4_window7_224.pth").load_model("swin_tiny_patch4_window7_224")
    with torch.no_grad():
        assert torch.equal(loaded(_sample_input()[:1]), source(_sample_input()[:1]))


def test_default_weights_come_from_the_hub_cache(source_model, hub_cache):
    snapshot = hub_cache / "models--timm--deit_tiny_patch16_224.fb_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (hub_cache / "models--timm--deit_tiny_patch16_224.fb_in1k" / "refs").mkdir()
    (hub_cache / "models--timm--deit_tiny_patch16_224.fb_in1k" / "refs" / "main").write_text("0123abcd")
    save_file(source_model.state_dict(), snapshot / "model.safetensors")
    task = _task()
    with torch.no_grad():
        assert torch.equal(task.load_model(MODEL)(_sample_input()), source_model(_sample_input()))
    assert task.weights_id(MODEL) == _sha16(snapshot / "model.safetensors")


def test_missing_hub_file_names_the_expected_file_and_the_alternative(hub_cache):
    with pytest.raises(HarnessError) as error:
        _task().load_model(MODEL)
    message = str(error.value)
    assert str(hub_cache / "models--timm--deit_tiny_patch16_224.fb_in1k") in message
    assert "model.safetensors" in message and "timm/deit_tiny_patch16_224.fb_in1k" in message
    assert "--checkpoint FILE" in message and "\n" not in message


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.safetensors"])
def test_corrupt_checkpoint_is_a_one_line_error_naming_the_file(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(HarnessError, match="unreadable") as error:
        _task(checkpoint=path).load_model(MODEL)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(HarnessError, match=re.escape(f"checkpoint {tmp_path / 'absent.pth'} does not exist")):
        _task(checkpoint=tmp_path / "absent.pth").load_model(MODEL)


def test_checkpoint_of_another_architecture_lists_the_differing_keys(tmp_path):
    path = tmp_path / "distilled.pth"
    torch.save({"model": timm.create_model("deit_tiny_distilled_patch16_224").state_dict()}, path)
    with pytest.raises(HarnessError) as error:
        _task(checkpoint=path).load_model(MODEL)
    message = str(error.value)
    assert str(path) in message and "does not fit deit_tiny_patch16_224" in message
    assert "unexpected keys" in message and "dist_token" in message and "head_dist.weight" in message


def test_checkpoint_for_another_resolution_is_refused_not_resampled(tmp_path):
    path = tmp_path / "vit_tiny_384.pth"
    torch.save(timm.create_model("vit_tiny_patch16_384").state_dict(), path)
    with pytest.raises(HarnessError, match=r"pos_embed has shape \(1, 577, 192\) in the file, \(1, 197, 192\)") as error:
        _task(checkpoint=path).load_model(MODEL)
    assert str(path) in str(error.value)


def test_prior_follows_each_models_pretrained_config():
    task = _task()
    deit, vit = task.prior(MODEL), task.prior("vit_small_patch16_224")
    assert deit.input_size == (3, 224, 224) and deit.num_classes == 1000
    assert deit.mean == pytest.approx((0.485, 0.456, 0.406)) and deit.std == pytest.approx((0.229, 0.224, 0.225))
    assert vit.mean == (0.5, 0.5, 0.5) and vit.std == (0.5, 0.5, 0.5)


def test_labels_are_synset_indices_not_folder_ranks(root):
    # class 1 always first, class 999 second, class 0 never in the top 5
    metrics = _task(root).evaluate(_biased_model({1: 10.0, 999: 9.0, 0: -10.0}), MODEL)
    assert metrics == {"top1": 25.0, "top5": 50.0}  # 1 of 4 images is in n01443537, 1 in n15075141


def test_limit_evaluates_the_first_images_in_sorted_order(root):
    model = _biased_model({0: 10.0, 1: -10.0, 999: -10.0})
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    task = _task(root)
    assert task.evaluate(model, MODEL, limit=1)["top1"] == 100.0 and sum(seen) == 1  # astronaut, class 0
    assert task.evaluate(model, MODEL, limit=3)["top1"] == pytest.approx(200 / 3)
    assert task.evaluate(model, MODEL)["top1"] == 50.0 and sum(seen) == 1 + 3 + 4


def test_evaluate_matches_a_manual_pass_over_timms_eval_transform(root, source_model):
    transform = create_transform(**resolve_data_config({}, model=source_model))
    index = {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
    paths = sorted(p for p in (root / "val").glob("*/*") if p.suffix != ".txt")
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    labels = torch.tensor([index[p.parent.name] for p in paths])
    model = _biased_model({})
    model.load_state_dict(source_model.state_dict())
    with torch.no_grad():
        logits = model(images)
        model.head.bias[labels[0]] += logits[0].max() - logits[0, labels[0]] + 0.01  # image 0 right, at least
        ranked = model(images).topk(5, dim=1).indices
    expected = {"top1": 100.0 * (ranked[:, 0] == labels).float().mean().item(),
                "top5": 100.0 * (ranked == labels[:, None]).any(1).float().mean().item()}
    assert expected["top1"] >= 25.0
    metrics = _task(root, num_workers=2).evaluate(model, MODEL)
    assert metrics == pytest.approx(expected)
    assert all(0.0 <= value <= 100.0 for value in metrics.values())


def test_calibration_images_are_seeded_real_train_images(root):
    task = _task(root)
    first, again, other = (task.calibration_images(MODEL, 3, seed) for seed in (0, 0, 1))
    assert first.shape == (3, 3, 224, 224) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(HarnessError, match="has 6 images; asked for 7"):
        task.calibration_images(MODEL, 7, 0)


def test_data_root_falls_back_to_the_environment(root, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", str(root))
    assert ImageNetOptions().data_root == str(root)
    assert ImageNetOptions(data_root="/elsewhere").data_root == "/elsewhere"


def test_missing_data_root_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    with pytest.raises(HarnessError, match=r"--data-root DIR or set IMAGENET_ROOT \(expected layout DIR/val/"):
        _task().evaluate(_biased_model({}), MODEL)


def test_missing_splits_and_foreign_folders_are_named(tmp_path):
    with pytest.raises(HarnessError, match=re.escape(f"{tmp_path / 'val'} does not exist")):
        _task(tmp_path).evaluate(_biased_model({}), MODEL)
    with pytest.raises(HarnessError, match=re.escape(f"{tmp_path / 'train'} does not exist")):
        _task(tmp_path).calibration_images(MODEL, 1, 0)
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    with pytest.raises(HarnessError, match=re.escape(f"no images in {tmp_path / 'val'}")):
        _task(tmp_path).evaluate(_biased_model({}), MODEL)
    (tmp_path / "val" / "cats").mkdir()
    with pytest.raises(HarnessError, match=re.escape(f"{tmp_path / 'val' / 'cats'} is not an ImageNet-1k class")):
        _task(tmp_path).evaluate(_biased_model({}), MODEL)


def test_unknown_model_and_bad_options_are_refused():
    with pytest.raises(HarnessError, match="not a model of task 'imagenet'"):
        _task().prior("resnet50")
    with pytest.raises(ValueError):
        ImageNetOptions(num_workers=-1)
    assert len(ImageNetTask.model_names) == 8 and ImageNetTask.metric_names == ("top1", "top5")


def _decodes(monkeypatch) -> list[str]:
    """The names of the files the eval cache decodes from now on (in this process: num_workers=0)."""
    decoded, getitem = [], cache._DecodedPixels.__getitem__

    def counted(self, index):
        decoded.append(self.samples[index][0].name)
        return getitem(self, index)
    monkeypatch.setattr(cache._DecodedPixels, "__getitem__", counted)
    return decoded


def _cached_batches(root: Path, model_name: str, batch_size: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    parts = cache.split_transform(eval_transform(model_name))
    samples = labelled_images(root / "val")
    entry = cache.preprocessed_images(samples, parts.pixels, root / "val", num_workers=0)
    return list(entry.loader(batch_size, parts.tensor))


@pytest.mark.parametrize("model_name", [MODEL, "vit_small_patch16_224"])
def test_cached_batches_are_the_decoded_tensors_bit_for_bit(root, model_name):
    """Grayscale, RGB, JPEG and PNG files of several sizes; DeiT's and ViT's normalizations share the pixels."""
    transform = eval_transform(model_name)
    samples = labelled_images(root / "val")
    decoded = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in samples])
    batches = _cached_batches(root, model_name)
    assert [len(images) for images, _ in batches] == [3, 1]
    assert torch.equal(torch.cat([images for images, _ in batches]), decoded)
    assert torch.cat([labels for _, labels in batches]).tolist() == [label for _, label in samples]


def test_a_grid_decodes_each_val_image_once_per_eval_transform(root, monkeypatch, tmp_path):
    monkeypatch.setenv("DFQ_HARNESS_CACHE", str(tmp_path / "cache"))
    decoded = _decodes(monkeypatch)
    model = _biased_model({1: 10.0, 999: 9.0, 0: -10.0})
    cached = [_task(root).evaluate(model, name) for name in (MODEL, "swin_tiny_patch4_window7_224", MODEL)]
    assert sorted(decoded) == sorted(path.name for path, _ in labelled_images(root / "val"))  # 4 decodes, not 12
    assert cached == [{"top1": 25.0, "top5": 50.0}] * 3 == [_task(root, eval_cache=False).evaluate(model, MODEL)] * 3
    assert len(decoded) == 4 and len(list((tmp_path / "cache" / "imagenet_eval").glob("*/images.npy"))) == 1


def test_the_cache_key_follows_the_decode_side_transform_and_the_files(root, tmp_path):
    samples = labelled_images(root / "val")
    deit, vit = (cache.split_transform(eval_transform(name)) for name in (MODEL, "vit_small_patch16_224"))
    key = cache.cache_key(samples, deit.pixels, root / "val")
    assert cache.cache_key(samples, vit.pixels, root / "val") == key  # another normalization, the same pixels
    wider = cache.split_transform(create_transform(input_size=(3, 224, 224), crop_pct=0.95, interpolation="bicubic"))
    assert cache.cache_key(samples, wider.pixels, root / "val") != key
    assert cache.cache_key(samples[:3], deit.pixels, root / "val") != key
    moved = tmp_path / "val"
    shutil.copytree(root / "val", moved)  # the same files elsewhere (modification times kept): the same pixels
    assert cache.cache_key(labelled_images(moved), deit.pixels, moved) == key
    touched = moved / "n01443537" / "chelsea.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1))
    assert cache.cache_key(labelled_images(moved), deit.pixels, moved) != key


def test_concurrent_runners_build_the_cache_once(root, monkeypatch, tmp_path):
    """Two runners ask at once: one decodes every image, the other waits and reads the finished copy."""
    decoded, getitem = [], cache._DecodedPixels.__getitem__

    def slow(self, index):
        time.sleep(0.05)
        decoded.append(index)
        return getitem(self, index)
    monkeypatch.setattr(cache._DecodedPixels, "__getitem__", slow)
    parts = cache.split_transform(eval_transform(MODEL))
    samples = labelled_images(root / "val")
    store = tmp_path / "store"
    (store / f".{cache.cache_key(samples, parts.pixels, root / 'val')}.dead").mkdir(parents=True)  # a crashed build
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        entries = list(pool.map(lambda _: cache.preprocessed_images(samples, parts.pixels, root / "val", 0, store),
                                range(2)))
    assert sorted(decoded) == [0, 1, 2, 3]  # each image once
    assert entries[0].directory == entries[1].directory and np.array_equal(entries[0].images, entries[1].images)
    assert sorted(path.name for path in store.iterdir()) == sorted([entries[0].directory.name,
                                                                    f"{entries[0].directory.name}.lock"])


def test_a_failed_build_leaves_nothing_half_written(root, monkeypatch, tmp_path):
    def broken(self, index):
        raise OSError("disk full")
    parts = cache.split_transform(eval_transform(MODEL))
    samples = labelled_images(root / "val")
    monkeypatch.setattr(cache._DecodedPixels, "__getitem__", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.preprocessed_images(samples, parts.pixels, root / "val", 0, tmp_path)
    assert [path.suffix for path in tmp_path.iterdir()] == [".lock"]


def test_transforms_without_one_to_tensor_step_are_not_cached():
    assert cache.split_transform(lambda image: image) is None
    assert cache.split_transform(transforms.Compose([transforms.CenterCrop(4), transforms.ToTensor(),
                                                     transforms.RandomErasing()])) is None
    assert ImageNetOptions().workers() == len(os.sched_getaffinity(0)) and ImageNetOptions(num_workers=3).workers() == 3


# filename -> what the stand-in hub does: write the file at the path given, or raise
DOWNLOADS: dict = {}


@pytest.fixture
def online(monkeypatch) -> list[tuple[str, str, str | None]]:
    """The hub reachable, its download function stood in for: it writes a file into the cache layout the
    real one uses and records each (repo, filename, revision) asked for."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def download(repo_id, filename, revision=None, cache_dir=None):
        asked.append((repo_id, filename, revision))
        behaviour = DOWNLOADS.get(filename)
        if isinstance(behaviour, Exception):
            raise behaviour
        folder = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("0123abcd")
        (folder / "snapshots" / "0123abcd").mkdir(parents=True, exist_ok=True)
        path = folder / "snapshots" / "0123abcd" / filename
        behaviour(path)
        return str(path)
    monkeypatch.setattr(weights, "hf_hub_download", download)
    return asked


def test_without_a_checkpoint_the_hub_file_is_fetched_once_then_loaded_strictly(source_model, hub_cache, online,
                                                                                monkeypatch):
    monkeypatch.setitem(DOWNLOADS, "model.safetensors", lambda path: save_file(source_model.state_dict(), path))
    task = _task()
    with torch.no_grad():
        assert torch.equal(task.load_model(MODEL)(_sample_input()), source_model(_sample_input()))
    assert online == [("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors", None)]
    fetched = next(hub_cache.rglob("model.safetensors"))
    assert task.weights_id(MODEL) == _sha16(fetched)
    _task().load_model(MODEL)  # now in the hub cache: not fetched again
    assert len(online) == 1


def test_a_repository_without_safetensors_gives_timms_other_file(source_model, hub_cache, online, monkeypatch):
    missing = weights._NOT_IN_REPOSITORY.__new__(weights._NOT_IN_REPOSITORY)  # built without an HTTP response
    Exception.__init__(missing, "404: model.safetensors is not in the repository")
    monkeypatch.setitem(DOWNLOADS, "model.safetensors", missing)
    monkeypatch.setitem(DOWNLOADS, "pytorch_model.bin", lambda path: torch.save(source_model.state_dict(), path))
    with torch.no_grad():
        assert torch.equal(_task().load_model(MODEL)(_sample_input()), source_model(_sample_input()))
    assert [filename for _, filename, _ in online] == ["model.safetensors", "pytorch_model.bin"]


def test_a_fetched_file_for_another_model_is_refused(hub_cache, online, monkeypatch):
    other = timm.create_model("deit_tiny_distilled_patch16_224").state_dict()
    monkeypatch.setitem(DOWNLOADS, "model.safetensors", lambda path: save_file(other, path))
    with pytest.raises(HarnessError, match="does not fit deit_tiny_patch16_224"):
        _task().load_model(MODEL)


def test_an_unreachable_hub_is_one_line_naming_the_alternatives(hub_cache, online, monkeypatch):
    unreachable = huggingface_hub.errors.LocalEntryNotFoundError("cannot reach huggingface.co")
    monkeypatch.setitem(DOWNLOADS, "model.safetensors", unreachable)
    with pytest.raises(HarnessError) as error:
        _task().load_model(MODEL)
    message = str(error.value)
    assert "fetching model.safetensors of timm/deit_tiny_patch16_224.fb_in1k" in message
    assert "cannot reach huggingface.co" in message and "--checkpoint FILE" in message and "\n" not in message


def test_offline_nothing_is_fetched_and_the_message_stays(hub_cache, online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match="HF_HUB_OFFLINE is set") as error:
        _task().load_model(MODEL)
    assert online == [] and str(hub_cache / "models--timm--deit_tiny_patch16_224.fb_in1k") in str(error.value)
