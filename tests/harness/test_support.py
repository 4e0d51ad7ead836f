"""The method x task matrix: declared needs and offers, checked for a whole grid before its first cell."""
from __future__ import annotations

import pytest

from harness.entry.cli import main
from harness.errors import HarnessError
from harness.plugin.capabilities import ATTENTION, BLOCKS, CLASSES, REAL_IMAGES
from harness.plugin.method import MethodSpec
from harness.plugin.registry import GENERATORS, METHODS, TASKS
from harness.plugin.support import declared_verdict, requirements, support_lines
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner
from methods.noise import GaussianNoise
from tasks.digits import DigitsTask


class ProbingNoise(GaussianNoise):
    """Stand-in: noise that declares it probes attention, and needs classes when ``num_images`` is 3."""

    needs = frozenset({ATTENTION})

    def required(self) -> frozenset[str]:
        return self.needs | ({CLASSES} if self.options.num_images == 3 else set())


class AttentionFreeDigits(DigitsTask):
    """Stand-in task: the digits models, declared without attention and with classes on a condition."""

    offers = {REAL_IMAGES: None, BLOCKS: None, CLASSES: "a label file (--task-opt labels=FILE)"}
    missing_labels = "no label file for {model}: pass --task-opt labels=FILE"

    def unmet(self, capability: str, model_name: str) -> str | None:
        return self.missing_labels.format(model=model_name) if capability == CLASSES else None


class LabelledDigits(AttentionFreeDigits):
    offers = {**AttentionFreeDigits.offers, ATTENTION: None}

    def unmet(self, capability: str, model_name: str) -> str | None:
        return None


@pytest.fixture
def stand_ins(monkeypatch):
    monkeypatch.setitem(GENERATORS._entries, "probing", ProbingNoise)
    monkeypatch.setitem(METHODS._entries, "probing", MethodSpec(generator="probing", calibrator="minmax"))
    monkeypatch.setitem(TASKS._entries, "flat", AttentionFreeDigits)
    monkeypatch.setitem(TASKS._entries, "labelled", LabelledDigits)


def test_requirements_name_the_part_that_needs_each_capability(stand_ins):
    assert requirements("probing", "minmax") == {ATTENTION: ["generator 'probing'"]}
    assert requirements("spdfq", "block_recon") == {ATTENTION: ["generator 'spdfq'"], CLASSES: ["generator 'spdfq'"],
                                                    BLOCKS: ["calibrator 'block_recon'"]}
    assert requirements("psaq", "minmax", tuner="psaq_v2") == {ATTENTION: ["generator 'psaq'", "tuner 'psaq_v2'"]}
    assert requirements("real", "minmax") == {REAL_IMAGES: ["generator 'real'"]}
    assert requirements("noise", "minmax") == {}
    three = GaussianNoise.Options(num_images=3)
    assert requirements("probing", "minmax", three) == {ATTENTION: ["generator 'probing'"],
                                                        CLASSES: ["generator 'probing'"]}


def test_declared_verdicts_follow_the_offers(stand_ins):
    assert declared_verdict("probing", "minmax", "digits").status == "runs"
    refused = declared_verdict("probing", "minmax", "flat")
    assert refused.status == "refused"
    assert refused.reasons == ("generator 'probing' needs attention (attention modules whose internals the priors "
                               "and calibrators probe): the task offers none",)
    assert declared_verdict("noise", "minmax", "flat").status == "runs"
    conditional = declared_verdict("spdfq", "block_recon", "labelled")
    assert conditional.status == "conditional"
    assert conditional.reasons == ("classes from a label file (--task-opt labels=FILE)",)


def test_the_whole_grid_is_refused_in_one_message_before_anything_runs(stand_ins, tmp_path, capsys):
    argv = ["run", "--methods", "noise,probing", "--tasks", "digits,flat", "--bits", "fp,w8a8,w4a4", "--limit", "20",
            "--results", str(tmp_path), "--no-progress", "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 2 (method, task, model) combination(s) of this grid "
                                                   "cannot run, so nothing ran: ")
    assert ("probing on flat digits_vit_seed0, probing on flat digits_vit_seed1: generator 'probing' needs attention "
            "(attention modules whose internals the priors and calibrators probe): flat offers none "
            "(--skip-unsupported runs the rest)") in err
    assert not (tmp_path / "records").exists() and not (tmp_path / "fp").exists()


def test_skip_unsupported_runs_the_rest_and_names_what_it_skipped_in_one_line(stand_ins, tmp_path, capsys):
    argv = ["run", "--methods", "noise,probing", "--tasks", "digits,flat", "--models", "digits_vit_seed0",
            "--bits", "fp,w8a8", "--limit", "20", "--results", str(tmp_path), "--no-progress", "--no-report",
            "--skip-unsupported"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped as unsupported:")]
    assert skipped == ["skipped as unsupported: probing on flat digits_vit_seed0, probing on flat digits_vit_seed1: "
                       "generator 'probing' needs attention (attention modules whose internals the priors and "
                       "calibrators probe): flat offers none"]  # --models names digits' models: flat runs all its own
    # 2 methods x 2 bits on digits' model, and on flat's two models FP twice and noise at w8a8
    assert "10 cells computed, 0 already finished, 0 failed" in captured.out


def test_a_conditional_offer_is_checked_on_the_cell_s_task_instance(stand_ins, tmp_path):
    spec = GridSpec(methods=("probing",), tasks=("labelled", "flat"), bits=("w8a8",),
                    generator_options={"num_images": 3}, limit=20)
    with pytest.raises(HarnessError) as error:
        GridRunner(tmp_path).run(spec)
    message = str(error.value)
    assert message.startswith("2 (method, task, model) combination(s) of this grid cannot run, so nothing ran: "
                              "probing on flat digits_vit_seed0: generator 'probing' needs attention")
    assert message.endswith("generator 'probing' needs attention (attention modules whose internals the priors and "
                            "calibrators probe): flat offers none; generator 'probing' needs classes (class logits of "
                            "the model images are synthesized through): no label file for digits_vit_seed0: pass "
                            "--task-opt labels=FILE | probing on flat digits_vit_seed1: generator 'probing' needs "
                            "attention (attention modules whose internals the priors and calibrators probe): flat "
                            "offers none; generator 'probing' needs classes (class logits of the model images are "
                            "synthesized through): no label file for digits_vit_seed1: pass --task-opt labels=FILE "
                            "(--skip-unsupported runs the rest)")
    assert "labelled" not in message  # its offers are met
    summary = GridRunner(tmp_path).run(spec, skip_unsupported=True)
    assert [(r["task"], r["status"]) for r in summary.records] == [("labelled", "ok"), ("labelled", "ok")]
    assert len(summary.unsupported) == 2 and summary.unsupported[0].startswith("probing on flat digits_vit_seed0: ")


def test_fp_cells_need_nothing(stand_ins, tmp_path):
    spec = GridSpec(methods=("probing",), tasks=("flat",), bits=("fp",), limit=20)
    summary = GridRunner(tmp_path).run(spec)
    assert [record["status"] for record in summary.records] == ["ok", "ok"] and summary.unsupported == []


def test_list_shows_the_matrix_with_needs_and_numbered_reasons(stand_ins, capsys):
    assert main(["list", "support"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("support (method x task")
    header = lines[1].split()
    assert header[:2] == ["method", "needs"] and header[2:] == sorted(TASKS.names())
    rows = {line.split()[0]: line for line in lines[2:] if not line.strip().startswith("[")}
    column = {task: header.index(task) for task in ("digits", "flat", "labelled")}

    notes = {line.strip().partition(" ")[0]: line.strip().partition(" ")[2] for line in lines
             if line.strip().startswith("[")}

    def verdict(method: str, task: str) -> str:
        """``yes``, or the referenced note (prefixed ``no`` where the pair is refused)."""
        cells = [word.strip() for word in rows[method][len("  "):].split("  ") if word.strip()]
        cell = cells[column[task]]
        return cell if cell == "yes" else f"{cell.partition('[')[0]}{notes['[' + cell.partition('[')[2]]}"

    assert verdict("noise", "flat") == "yes" and verdict("probing", "digits") == "yes"
    assert verdict("probing", "flat") == ("no generator 'probing' needs attention (attention modules whose "
                                          "internals the priors and calibrators probe): the task offers none")
    assert verdict("spdfq", "labelled") == "runs with classes from a label file (--task-opt labels=FILE)"
    assert verdict("spdfq", "digits") == "yes"
    assert rows["probing"].split()[1] == "attention" and rows["noise"].split()[1] == "-"
    assert support_lines()[0].split()[:2] == ["method", "needs"]
