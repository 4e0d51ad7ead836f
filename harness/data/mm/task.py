"""Base class of the mmdet / mmseg task plugins: config, weights, data layout, metric and backbone prior.

A subclass names its OpenMMLab ``scope`` (``mmdet`` / ``mmseg``), its models (config references),
its dataset layout and how the library's metric maps to the harness's metric names. Generators
see the backbone at its pre-training resolution (docs/methods.md, Task-agnostic backbones); the
quantizer converts the backbone, or with ``quantize=all`` the neck and heads too.
"""
from __future__ import annotations

from abc import abstractmethod
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from harness.data.mm.checkpoint import load_weights
from harness.data.mm.class_source import CLASS_SOURCES, BackboneHead, ClassSource, build_classifier, classifier_head, resolve
from harness.data.mm.config import cached_weights, load_config
from harness.data.mm.data import evaluate, folder_images
from harness.data.mm.registry import build, build_model
from harness.data.mm.stack import skip_without_stack
from harness.errors import HarnessError
from harness.plugin.capabilities import ATTENTION, BLOCKS, CLASSES, REAL_IMAGES
from harness.plugin.options import at_least
from harness.plugin.registry import register_models
from harness.plugin.task import ImagePrior, SynthesisTarget, Task, TaskOptions
from harness.plugin.task_setup import TaskSetup
from harness.quant.objectives import OutputObjective
from harness.store.io import file_sha256

SCOPES = ("backbone", "all")
IMAGENET_CLASSES = 1000  # the class source's classifiers are ImageNet-1k ones


@dataclass
class OpenMMLabOptions(TaskOptions):
    """``config``: a local mmengine config used instead of the model's own (it may inherit from it
    with ``_base_``); ``quantize``: ``backbone`` (the default, docs/methods.md,
    Task-agnostic backbones) or ``all`` (neck and heads too);
    ``prior_size``: side of calibration images, default the backbone's pre-training size;
    ``prior_classifier``: weights of the ImageNet classifier the backbone was pre-trained as, the class
    source of generators that need classes (default: timm's file in the hub cache), used as
    ``class_source`` says (docs/methods.md, Class sources)."""

    config: str | None = None
    quantize: Literal["backbone", "all"] = "backbone"
    prior_size: int | None = None
    prior_classifier: str | None = None
    class_source: Literal["classifier", "backbone_head"] = "classifier"
    batch_size: int = at_least(1, 1)  # mmdet/mmseg evaluate full-resolution images one at a time
    num_workers: int = at_least(0, 2)

    def __post_init__(self) -> None:
        if self.quantize not in SCOPES:
            raise ValueError(f"quantize must be one of {', '.join(SCOPES)}, got {self.quantize!r}")
        if self.class_source not in CLASS_SOURCES:
            raise ValueError(f"class_source must be one of {', '.join(CLASS_SOURCES)}, got {self.class_source!r}")
        if self.batch_size < 1 or self.num_workers < 0 or (self.prior_size is not None and self.prior_size < 8):
            raise ValueError("batch_size must be >= 1, num_workers >= 0 and prior_size >= 8")


@dataclass(frozen=True)
class OpenMMLabModel:
    """A registered model: its config reference, the timm ImageNet classifier its backbone was pre-trained
    as (the class source, docs/methods.md), and the resolution of that pre-training."""

    config: str  # "mmdet::swin/....py" (shipped in the package) or a file path
    classifier: str  # timm name with its pretrained tag, e.g. "swin_tiny_patch4_window7_224.ms_in1k"
    description: str = ""
    pretrain_size: int = 224


class TensorForward(nn.Module):
    """A detector or segmentor as a module from normalized images to its raw head outputs (``mode='tensor'``)."""

    def __init__(self, model: nn.Module, task: "OpenMMLabTask") -> None:
        super().__init__()
        self.model = model
        self._samples = task.tensor_samples

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images, self._samples(images), mode="tensor")


class OpenMMLabTask(Task):
    scope: ClassVar[str]
    models: ClassVar[dict[str, OpenMMLabModel]]
    train_images: ClassVar[str]  # folder under the data root that `real` draws calibration images from
    layout_hint: ClassVar[str]  # the expected layout, in words, for error messages
    Options = OpenMMLabOptions
    offers = {REAL_IMAGES: None, ATTENTION: None, BLOCKS: None,  # a backbone has no classes of its own
              CLASSES: "a class source: the ImageNet classifier the backbone was pre-trained as "
                       "(--task-opt prior_classifier=FILE, or timm's file in the Hugging Face hub cache)"}

    @classmethod
    def registered_as(cls, name: str) -> None:
        """The task's ``models`` are registered with it: ``model_names`` is derived, never written twice."""
        super().registered_as(name)
        cls.model_names = register_models(name, {model: entry.description for model, entry in cls.models.items()})

    def __init__(self, options: OpenMMLabOptions | None = None) -> None:
        super().__init__(options)
        self._configs: dict[str, Any] = {}
        self._weights_ids: dict[str, str] = {}
        self._class_sources: dict[str, ClassSource] = {}

    # -- what a subclass provides -------------------------------------------------------------
    @abstractmethod
    def required_paths(self, root: Path, dataset_config: Any) -> dict[str, Path]:
        """What must exist under ``root`` for evaluation, by description (checked before building anything)."""

    @abstractmethod
    def metric_config(self, root: Path, config: Any) -> dict[str, Any]:
        """The mmengine metric config of the test evaluator, pointed at ``root``."""

    @abstractmethod
    def harness_metrics(self, raw: dict[str, float]) -> dict[str, float]:
        """The library metric's values as the task's ``metric_names``, in percent."""

    @classmethod
    @abstractmethod
    def tiny_instance(cls, workdir: Path) -> TaskSetup:
        """A tiny offline instance in the dataset's layout, scored against the FP model's own predictions."""

    @classmethod
    def conformance_setup(cls, workdir: Path) -> TaskSetup:
        """The conformance kit's instance; the kit skips (with the install hint) without the `detseg` extra."""
        skip_without_stack()
        return cls.tiny_instance(workdir)

    def tensor_samples(self, images: torch.Tensor) -> list | None:
        """Data samples ``mode='tensor'`` needs for ``images`` (a two-stage detector reads image shapes)."""
        return None

    # -- the Task contract --------------------------------------------------------------------
    def load_model(self, model_name: str) -> nn.Module:
        model = build_model(self.scope, self.config(model_name).model)
        load_weights(model, self._checkpoint(model_name))
        return model

    def prior(self, model_name: str) -> ImagePrior:
        preprocessor = self.config(model_name).model.data_preprocessor
        size = self.options.prior_size or self._entry(model_name).pretrain_size
        return ImagePrior(input_size=(3, size, size), mean=tuple(m / 255 for m in preprocessor.mean),
                          std=tuple(s / 255 for s in preprocessor.std), num_classes=None)

    def calibration_images(self, model_name: str, num_images: int, seed: int) -> torch.Tensor:
        return folder_images(self._root() / self.train_images, num_images, seed, self.prior(model_name))

    def evaluate(self, model: nn.Module, model_name: str, limit: int | None = None) -> dict[str, float]:
        dataset = self.dataset(model_name, limit)  # checks the layout first
        metric = build(self.scope, "METRICS", self.metric_config(self._root(), self.config(model_name)))
        raw = evaluate(model, dataset, metric, self.options.batch_size,
                       self.options.num_workers, description=f"{self.name} {model_name}")
        return self.harness_metrics(raw)

    def dataset(self, model_name: str, limit: int | None = None) -> Any:
        """The evaluation split as the library's dataset, after checking the layout; first ``limit`` images."""
        root = self._root()
        dataset_config = self.config(model_name).test_dataloader.dataset.copy()
        dataset_config.data_root = str(root)
        for description, path in self.required_paths(root, dataset_config).items():
            if not path.exists():
                raise HarnessError(f"{self.name}: {description} not found: {path} (expected {self.layout_hint})")
        if limit:
            dataset_config.indices = limit
        return build(self.scope, "DATASETS", dataset_config)

    def evaluation_size(self, model_name: str) -> int:
        return len(self.dataset(model_name))

    def check_environment(self, model_name: str) -> None:
        super().check_environment(model_name)
        self._root()
        self._checkpoint(model_name)

    def weights_id(self, model_name: str) -> str:
        self._entry(model_name)
        if model_name not in self._weights_ids:
            self._weights_ids[model_name] = file_sha256(self._checkpoint(model_name))
        return self._weights_ids[model_name]

    def backbone(self, model: nn.Module) -> nn.Module:
        return model.backbone

    def quantized_part(self, model: nn.Module) -> nn.Module:
        return model.backbone if self.options.quantize == "backbone" else TensorForward(model, self)

    def part_backbone(self, part: nn.Module) -> nn.Module:
        return part.model.backbone if isinstance(part, TensorForward) else part

    def quantization_scope(self) -> str:
        return "backbone" if self.options.quantize == "backbone" else "backbone, neck and heads"

    def output_objective(self, fp_model: nn.Module, temperature: float) -> OutputObjective:
        """Refused by default (HarnessError): a backbone has no logits; a task that offers ``objective`` overrides this."""
        raise HarnessError(f"task {self.name} offers no objective on its quantized part's output "
                           f"(docs/plugins.md, Support)")

    def synthesis_target(self, model_name: str, fp_model: nn.Module, classes: bool) -> SynthesisTarget:
        """The backbone; for a generator that needs classes, the class source (docs/methods.md, Class sources)."""
        if not classes:
            return super().synthesis_target(model_name, fp_model, classes)
        source = self.class_source(model_name)
        prior = dataclasses.replace(self.prior(model_name), num_classes=IMAGENET_CLASSES)
        if source.kind == "backbone_head":
            return SynthesisTarget(prior, lambda: BackboneHead(self.backbone(fp_model), classifier_head(source)),
                                   source.record())
        backbone = self.config(model_name).model.backbone
        return SynthesisTarget(prior, lambda: build_classifier(source, backbone, prior), source.record())

    def class_source(self, model_name: str) -> ClassSource:
        """The classifier, weights and use the options give for ``model_name``; a HarnessError says what is missing."""
        if model_name not in self._class_sources:
            entry, options = self._entry(model_name), self.options
            try:
                self._class_sources[model_name] = resolve(options.class_source, entry.classifier,
                                                          options.prior_classifier,
                                                          self.config(model_name).model.backbone.type)
            except HarnessError as error:
                raise HarnessError(f"no class source for {model_name}: {error}") from None
        return self._class_sources[model_name]

    def unmet(self, capability: str, model_name: str) -> str | None:
        if capability != CLASSES:
            return None
        try:
            self.class_source(model_name)
        except HarnessError as error:
            return str(error)
        return None

    # -- helpers ------------------------------------------------------------------------------
    def config(self, model_name: str) -> Any:
        """The model's mmengine config (the ``config`` option's file when given), parsed once."""
        entry = self._entry(model_name)
        if model_name not in self._configs:
            config = load_config(self.options.config or entry.config)
            config.model.pop("pretrained", None)  # the harness loads the weights itself, never downloads
            config.model.pop("init_cfg", None)
            for key in ("init_cfg", "pretrained"):
                config.model.backbone.pop(key, None)
            self._configs[model_name] = config
        return self._configs[model_name]

    def _entry(self, model_name: str) -> OpenMMLabModel:
        if model_name not in self.models:
            raise HarnessError(f"model {model_name!r} is not a {self.name} model; accepted: {', '.join(self.models)}")
        return self.models[model_name]

    def _checkpoint(self, model_name: str) -> Path:
        if self.options.checkpoint:
            return Path(self.options.checkpoint).expanduser()
        cached, url = cached_weights(self._entry(model_name).config)
        if cached is not None and cached.is_file():
            return cached
        where = f"expected {cached} (mmengine's download cache; fetch {url} where there is network), or" if cached else "pass"
        raise HarnessError(f"no weights for {self.name} model {model_name}: {where} --checkpoint FILE")

    def _root(self) -> Path:
        if not self.options.data_root:
            raise HarnessError(f"{self.name} needs its data root: pass --data-root DIR (expected {self.layout_hint})")
        return Path(self.options.data_root).expanduser()
