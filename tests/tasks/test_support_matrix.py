"""Every registered method on every task's tiny instance: it runs, or it is refused exactly as declared.

One grid per instance with every method at W4A8 and each part's smoke options (the conformance kit's
fast budgets). A pair the declarations call conditional runs with the condition met (a class source
for the detection/segmentation tasks) and is refused, before anything runs, without it. On ImageNet's
DeiT-Ti at 224 px the default run gives every method's generator and tuner the min-max calibrator: three
calibrators' searches (adalog, aphq, fimaq) take 15-32 s each there even at smoke budgets, and every
calibrator runs on the digits instance and in its own tests; the full ImageNet matrix is marked slow.
"""
from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from harness.errors import HarnessError
from harness.plugin.conformance import TaskSetup, smoke_options
from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, TASKS, TUNERS
from harness.plugin.support import declared_verdict, requirements
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from tiny_imagenet import tiny_imagenet

def _smoke_grid(task: str, setup: TaskSetup, task_options: dict[str, str], methods: list[str],
                calib: tuple[str, ...] = ()) -> GridSpec:
    """Every method of ``methods`` with its own parts, or with the calibrators ``calib`` in place of its own."""
    specs = [METHODS.get(name) for name in methods]

    def options(registry, names) -> dict:
        return {f"{name}.{key}": value for name in set(names) for key, value in smoke_options(registry.get(name), name).items()}

    return GridSpec(methods=tuple(methods), tasks=(task,), models=(setup.model_name,), bits=("w4a8",),
                    generator_options=options(GENERATORS, [spec.generator for spec in specs]),
                    calib=calib, calibrator_options=options(CALIBRATORS, calib or [spec.calibrator for spec in specs]),
                    tuner_options=options(TUNERS, [spec.tuner for spec in specs if spec.tuner]),
                    task_options={**setup.options, **task_options}, limit=setup.limit)


@pytest.mark.parametrize("task, calib", [("digits", ()), ("imagenet", ("minmax",)),
                                         pytest.param("imagenet", (), marks=pytest.mark.slow)],
                         ids=["digits", "imagenet-minmax", "imagenet-every-calibrator"])
def test_every_method_runs_on_the_classification_tasks(task, calib, tmp_path, monkeypatch):
    setup = TaskSetup(model_name="digits_vit_seed0", limit=64) if task == "digits" else tiny_imagenet(tmp_path / "data")
    _runs_or_is_refused_as_declared(task, setup, {}, tmp_path, monkeypatch, calib)


def test_every_method_runs_on_coco_with_a_class_source_and_is_refused_as_declared_without(
        tiny_coco, tiny_classifier, tmp_path, monkeypatch):
    _runs_or_is_refused_as_declared("coco", tiny_coco, {"prior_classifier": tiny_classifier(tiny_coco)}, tmp_path,
                                    monkeypatch)


def test_every_method_runs_on_ade20k_with_a_class_source_and_is_refused_as_declared_without(
        tiny_ade20k, tiny_classifier, tmp_path, monkeypatch):
    _runs_or_is_refused_as_declared("ade20k", tiny_ade20k, {"prior_classifier": tiny_classifier(tiny_ade20k)},
                                    tmp_path, monkeypatch)


def _runs_or_is_refused_as_declared(task: str, setup: TaskSetup, condition: dict[str, str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, calib: tuple[str, ...] = ()) -> None:
    """Every method the declarations do not refuse runs with ``condition`` (the options meeting the task's
    conditional offers); without it, exactly the pairs whose condition this instance leaves unmet are refused, for
    the reasons the task instance gives; a declared refusal is refused before anything runs."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    verdicts = {name: declared_verdict(method.generator, method.calibrator, task, method.tuner)
                for name, method in METHODS.items()}
    refused = sorted(name for name, verdict in verdicts.items() if verdict.status == "refused")
    if refused:
        with pytest.raises(HarnessError) as error:
            GridRunner(tmp_path / "refused").run(_smoke_grid(task, setup, condition, refused))
        assert all(f"{name} on {task}" in str(error.value) for name in refused)
    runnable = sorted(set(METHODS.names()) - set(refused))
    summary = GridRunner(tmp_path / "met").run(_smoke_grid(task, setup, condition, runnable, calib))
    records = {record["method"]: record for record in summary.records}
    assert set(records) == set(runnable)
    assert {method: record.get("error") for method, record in records.items() if record["status"] != "ok"} == {}
    metrics = set(TASKS.get(task).metric_names)
    assert all(set(record["metrics"]) == metrics for record in records.values())

    task_instance = TASKS.get(task)(TASKS.get(task).Options(**setup.options))  # without the condition

    def reasons(name: str) -> list[str]:
        method = METHODS.get(name)
        return [reason for capability in requirements(method.generator, method.calibrator, tuner=method.tuner)
                if (reason := task_instance.unmet(capability, setup.model_name)) is not None]

    conditional = [name for name in runnable if verdicts[name].status == "conditional" and reasons(name)]
    assert bool(conditional) == bool(condition)  # only the detection/segmentation tasks need options
    if not conditional:
        return
    with pytest.raises(HarnessError) as error:  # the same grid without the class source
        GridRunner(tmp_path / "unmet").run(_smoke_grid(task, setup, {}, runnable))
    message = str(error.value)
    for name in conditional:
        assert f"{name} on {task} {setup.model_name}" in message
        assert all(reason in message for reason in reasons(name))
    assert not any(f"{name} on {task}" in message for name in set(runnable) - set(conditional))
    assert message.startswith(f"{len(conditional)} (method, task, model) combination(s) of this grid cannot run")
    assert not (tmp_path / "unmet" / "records").exists()


def test_the_declared_matrix_of_the_registered_plugins():
    """What `list support` shows: spdfq's classes are conditional on detection/segmentation; maskaq reads a class
    token, which an ImageNet model has unless it is a Swin, and a detection/segmentation backbone has not."""
    rows = {(name, task): declared_verdict(method.generator, method.calibrator, task, method.tuner)
            for name, method in METHODS.items() for task in TASKS.names()}
    conditional = {pair for pair, verdict in rows.items() if verdict.status == "conditional"}
    refused = {pair for pair, verdict in rows.items() if verdict.status == "refused"}
    assert conditional == {(method, task) for method in ("spdfq", "spdfq_minmax") for task in ("ade20k", "coco")} | {
        ("maskaq", "imagenet")}
    # FIMA-Q's reconstruction loss is defined on the model's logits, which a backbone lacks; APHQ-ViT's on the task's
    # objective, which a detector has (its region proposals) and a segmentor has not
    assert refused == {(method, task) for method in ("maskaq", "fima_q") for task in ("ade20k", "coco")} | {
        ("aphq_vit", "ade20k")}
    assert rows[("aphq_vit", "ade20k")].reasons == (
        "calibrator 'aphq' needs objective (a differentiable objective on the quantized part's output, whose "
        "gradient a calibrator weighs by (a classifier's logits; a two-stage detector's region proposals; none for "
        "segmentation)): the task offers none",)
    assert rows[("maskaq", "coco")].reasons == (
        "generator 'maskaq' needs class token (a class token whose attention row over the patches a prior reads "
        "(ViT, DeiT; not Swin)): the task offers none",)
    assert {verdict.status for pair, verdict in rows.items() if pair not in conditional | refused} == {"runs"}
    assert rows[("spdfq", "coco")].reasons == (
        "classes from a class source: the ImageNet classifier the backbone was pre-trained as "
        "(--task-opt prior_classifier=FILE, or timm's file in the Hugging Face hub cache)",)
