"""The conformance kit over every registered plugin, and proof that it names the rule a broken one breaks."""
from __future__ import annotations

import os
from dataclasses import dataclass

import huggingface_hub
import pytest
import torch

from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.conformance import (REGISTRIES, ConformanceError, ConformanceSkip, Hooks, cases, check, check_task,
                                        run_case, smoke_options)
from harness.plugin.method import CalibrationContext, CalibrationSet, Calibrator, GenerationContext, Generator
from harness.plugin.method import ImageCountOptions, MethodSpec
from harness.plugin.registry import GENERATORS, METHODS
from tasks.digits import DigitsTask
from tiny_imagenet import tiny_imagenet

HOOKS = Hooks(task_setups={"imagenet": tiny_imagenet})  # tasks/imagenet needs a self-made dataset


@pytest.mark.parametrize("kind, name", cases())
def test_registered_plugin_conforms(kind, name):
    run_case(kind, name, HOOKS)


def _uniform(context: GenerationContext, seed: int, count: int = 4) -> torch.Tensor:
    pixels = torch.rand(count, *context.prior.input_size, generator=torch.Generator().manual_seed(seed))
    low, high = context.prior.clamp_bounds()
    return low + (high - low) * pixels


class Uniform(Generator):
    """Conforming: uniform pixels. Each class below breaks one rule of it."""

    Options = ImageCountOptions
    smoke_options = {"num_images": 4}

    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(_uniform(context, context.seed))


class NonDeterministic(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(_uniform(context, int.from_bytes(os.urandom(4), "little")))


class SeedIgnored(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(_uniform(context, 0))


class WithNaN(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        images = _uniform(context, context.seed)
        images[0, 0, 0, 0] = float("nan")
        return CalibrationSet(images)


class OutOfRange(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(3 * _uniform(context, context.seed))


class DeclaredOutOfRange(OutOfRange):
    in_pixel_range = False


class WrongShape(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(_uniform(context, context.seed)[..., :8])


class MutatesModelWhileGenerating(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        context.model.head.register_forward_hook(lambda *args: None)
        return super().generate(context)


class UnserializableInfo(Uniform):
    def generate(self, context: GenerationContext) -> CalibrationSet:
        return CalibrationSet(_uniform(context, context.seed), info={"device": torch.device("cpu")})


@dataclass
class NoDefault:
    count: int


@dataclass
class TupleLostInJson:
    sizes: tuple[int, ...] = (1, 2)


class UndocumentedOptions(Uniform):
    Options = NoDefault


class LossyOptions(Uniform):
    Options = TupleLostInJson


class MutatesFPModel(MinMaxCalibrator):
    def calibrate(self, qmodel, context: CalibrationContext) -> None:
        super().calibrate(qmodel, context)
        with torch.no_grad():
            context.fp_model.head.bias.add_(1.0)


class ReplacesFPModule(MinMaxCalibrator):
    def calibrate(self, qmodel, context: CalibrationContext) -> None:
        super().calibrate(qmodel, context)
        context.fp_model.head = torch.nn.Linear(context.fp_model.head.in_features, context.fp_model.head.out_features)


class FreezesNothing(Calibrator):
    def calibrate(self, qmodel, context: CalibrationContext) -> None:
        return None


class BatchDependentDigits(DigitsTask):
    def evaluate(self, model, model_name, limit=None):
        return {"top1": super().evaluate(model, model_name, limit)["top1"] - self.options.batch_size / 1000}


class KeyErrorDigits(DigitsTask):
    def load_model(self, model_name):
        return super().load_model({"digits_vit_seed0": "digits_vit_seed0"}[model_name])


BROKEN = [  # (kind, plugin, the rule it breaks or None when it conforms)
    ("generator", Uniform, None),
    ("generator", DeclaredOutOfRange, None),
    ("generator", NonDeterministic, "generator-determinism"),
    ("generator", SeedIgnored, "generator-seed"),
    ("generator", WithNaN, "generator-finite"),
    ("generator", OutOfRange, "generator-clamp"),
    ("generator", WrongShape, "generator-shape"),
    ("generator", MutatesModelWhileGenerating, "generator-fp-untouched"),
    ("generator", UnserializableInfo, "generator-info-json"),
    ("generator", UndocumentedOptions, "options-defaults"),
    ("generator", LossyOptions, "options-round-trip"),
    ("calibrator", MutatesFPModel, "calibrator-fp-untouched"),
    ("calibrator", ReplacesFPModule, "calibrator-fp-untouched"),
    ("calibrator", FreezesNothing, "calibrator-freezes"),
    ("method", MethodSpec(generator="no_such_generator", calibrator="minmax"), "method-parts"),
    ("task", BatchDependentDigits, "task-batch-size-invariance"),
    ("task", KeyErrorDigits, "errors-unknown-model"),
]


@pytest.mark.parametrize("kind, plugin, rule", BROKEN,
                         ids=[getattr(plugin, "__name__", "UnregisteredPart") for _, plugin, _ in BROKEN])
def test_a_broken_plugin_fails_naming_the_rule(kind, plugin, rule, monkeypatch):
    name = "digits" if kind == "task" else "under_test"  # a task keeps the name its models are registered to
    monkeypatch.setitem(REGISTRIES[kind]._entries, name, plugin)
    if rule is None:
        check(kind, name)
        return
    with pytest.raises(ConformanceError, match=rf"^\[{rule}\] {kind} '{name}': "):
        check(kind, name)


def test_a_method_whose_cell_fails_names_the_error(monkeypatch):
    monkeypatch.setitem(GENERATORS._entries, "broken", WithNaN)
    monkeypatch.setitem(METHODS._entries, "broken", MethodSpec(generator="broken", calibrator="minmax"))
    with pytest.raises(ConformanceError, match=r"\[method-runs\] method 'broken': .*non-finite images"):
        check("method", "broken")


def test_smoke_options_come_from_the_plugin_then_the_hook_then_num_images():
    hooks = Hooks(smoke_options={"uniform": {"num_images": 2}})
    assert smoke_options(Uniform, "uniform", hooks) == {"num_images": 4}
    assert smoke_options(Generator, "uniform", hooks) == {"num_images": 2}
    assert smoke_options(Generator, "other") == {}  # its NoOptions has no num_images
    undeclared = type("Undeclared", (Uniform,), {"smoke_options": None})
    assert smoke_options(undeclared, "uniform", hooks) == {"num_images": 2}
    assert smoke_options(undeclared, "other") == {"num_images": 4}


def test_a_task_needing_data_without_a_setup_is_skipped_with_the_hook_to_add(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConformanceSkip, match=r"task 'imagenet' needs data .* conformance_setup\(workdir\)"):
        check_task("imagenet")
