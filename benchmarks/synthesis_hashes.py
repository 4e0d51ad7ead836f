"""sha256 of what the pixel-synthesis generators and PSAQ-ViT V2's sample step produce on digits.

    python benchmarks/synthesis_hashes.py [--out FILE]

A refactoring of the shared synthesis loop (:mod:`harness.priors.loop`) must leave these bitwise
unchanged: run it before and after on the same machine (one thread) and compare. Small budgets,
several batches and rounds, fixed seeds. PSAQ-ViT V2's loop is a tuner (after min-max calibration) and returns
no images: its hash covers the tuned model's state and the per-round discrepancies, which every sample step moves.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.plugin.calibrators import MinMaxCalibrator  # noqa: E402
from harness.plugin.method import CalibrationContext, GenerationContext  # noqa: E402
from harness.plugin.registry import TASKS  # noqa: E402
from harness.plugin.tuner import TuningContext  # noqa: E402
from harness.quant.bits import parse_bits  # noqa: E402
from harness.quant.convert import QuantConfig, quantize_model  # noqa: E402
from methods.psaq.generator import PatchSimilarityGenerator, PSAQOptions  # noqa: E402
from methods.psaq_v2 import InitOptions, PSAQV2InitGenerator, PSAQV2Options, PSAQV2Tuner  # noqa: E402
from methods.spdfq.generator import SPDFQGenerator, SPDFQOptions  # noqa: E402

MODEL, SEED, CPU = "digits_vit_seed0", 3, torch.device("cpu")
GENERATORS = {
    "psaq": PatchSimilarityGenerator(PSAQOptions(num_images=5, batch_size=3, iterations=4, warmup=2,
                                                 roll_ranges=(3, 6))),
    "psaq_v2_init": PSAQV2InitGenerator(InitOptions(num_images=5, batch_size=3, prior_iterations=4, warmup=2)),
    "spdfq": SPDFQGenerator(SPDFQOptions(num_images=5, batch_size=3, iterations=4, warmup=2)),
    "spdfq_plain": SPDFQGenerator(SPDFQOptions(num_images=3, batch_size=3, iterations=3, warmup=1, apa=False,
                                               msr=False, sl=False, lr=0.1)),
}


def tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def hashes() -> dict[str, str]:
    task = TASKS.get("digits")()
    model, prior = task.load_model(MODEL), task.prior(MODEL)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    found, sets = {}, {}
    for name, generator in GENERATORS.items():
        torch.manual_seed(SEED)
        sets[name] = generator.generate(GenerationContext(task=None, model_name=MODEL, model=model, prior=prior,
                                                          seed=SEED, device=CPU))
        found[name] = tensor_digest(sets[name].images)
        if sets[name].labels is not None:
            found[f"{name}.labels"] = tensor_digest(sets[name].labels)
    bits = parse_bits("w4a4")
    for name in ("psaq_v2_init", "spdfq_plain"):  # its own first samples, and another generator's
        qmodel = quantize_model(model, bits, QuantConfig())
        context = dict(fp_model=model, calibration=sets[name], bits=bits, seed=SEED, device=CPU, prior=prior)
        MinMaxCalibrator().calibrate(qmodel, CalibrationContext(**context))
        info = PSAQV2Tuner(PSAQV2Options(iterations=8, rounds=2, batch_size=3)).tune(qmodel, TuningContext(**context))
        found[f"psaq_v2 on {name}.student"] = tensor_digest(*qmodel.state_dict().values())
        found[f"psaq_v2 on {name}.rounds"] = hashlib.sha256(json.dumps(info["rounds"]).encode()).hexdigest()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the hashes here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = hashes()
    text = json.dumps(found, indent=1, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
