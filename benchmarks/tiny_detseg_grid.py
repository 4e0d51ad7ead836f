"""Every registered method on the tiny offline COCO and ADE20K instances at one bit width.

What the headline command does on detection and segmentation, end to end, on data made here:
a random-init tiny Mask R-CNN / UperNet (their own predictions as ground truth, see
``tasks/coco/tiny.py`` and ``tasks/ade20k/tiny.py``) and a random-init classifier of the backbone's
architecture as the class source. The figures show that every pair runs and how far each method's
quantized model moves from the FP one; a random-init model says nothing about a method's quality.

    python benchmarks/tiny_detseg_grid.py --bits w4a8 --results /tmp/tiny_detseg [--methods repq_vit,ptq4vit]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from harness.entry.cli import main
from harness.plugin.registry import METHODS

# the tiny instances' backbones as timm classifiers (the architecture the backbone was pre-trained as)
TINY_CLASSIFIER = ("swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)))
# small synthesis and calibration budgets: the point is that every pair runs, in minutes on a laptop
BUDGETS = {"psaq": ["iterations=40", "warmup=4"], "psaq_v2_init": ["prior_iterations=4"],
           "spdfq": ["iterations=40", "warmup=4"], "real": ["num_images=4"]}
CALIBRATOR_BUDGETS = {"psaq_v2": ["iterations=20"], "block_recon": ["iterations=20"], "ranking": ["rounds=1"]}


def write_classifier(path: Path, size: int) -> Path:
    """A random-init classifier of the tiny backbones' architecture at the prior size."""
    name, architecture = TINY_CLASSIFIER
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, img_size=size, **architecture)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, path)
    return path


def run_task(task: str, setup, classifier: Path, bits: str, results: Path, methods: str | None) -> int:
    """``harness run`` with ``methods`` (default: every method) on one tiny instance."""
    options = dict(setup.options)
    names = methods.split(",") if methods else METHODS.names()
    generators = {METHODS.get(name).generator for name in names}
    calibrators = {METHODS.get(name).calibrator for name in names}
    argv = ["run", "--tasks", task, "--methods", ",".join(names), "--bits", bits,
            "--models", setup.model_name, "--data-root", options.pop("data_root"),
            "--checkpoint", options.pop("checkpoint"), "--results", str(results), "--no-report",
            "--task-opt", f"{task}.prior_classifier={classifier}"]
    argv += [item for key, value in options.items() for item in ("--task-opt", f"{task}.{key}={value}")]
    argv += [item for generator, settings in BUDGETS.items() if generator in generators for setting in settings
             for item in ("--gen-opt", f"{generator}.{setting}")]
    argv += [item for calibrator, settings in CALIBRATOR_BUDGETS.items() if calibrator in calibrators
             for setting in settings for item in ("--calib-opt", f"{calibrator}.{setting}")]
    return main(argv)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="w4a8")
    parser.add_argument("--results", type=Path, required=True, help="results folder (the report is written there)")
    parser.add_argument("--tasks", default="coco,ade20k")
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    return parser.parse_args()


if __name__ == "__main__":
    args = arguments()
    from tasks.ade20k.tiny import write_tiny_ade20k
    from tasks.coco.tiny import write_tiny_coco

    writers = {"coco": write_tiny_coco, "ade20k": write_tiny_ade20k}
    with tempfile.TemporaryDirectory() as folder:
        status = 0
        for task in args.tasks.split(","):
            setup = writers[task](Path(folder) / task)
            classifier = write_classifier(Path(folder) / f"{task}_classifier.safetensors", setup.options["prior_size"])
            status = status or run_task(task, setup, classifier, args.bits, args.results, args.methods)
        status = status or main(["report", "--results", str(args.results)])
    sys.exit(status)
