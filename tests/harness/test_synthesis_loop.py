"""The shared pixel-synthesis loop (harness.priors.loop): what every method relies on it for."""
import dataclasses

import pytest
import torch

from harness.plugin.task import ImagePrior
from harness.priors.loop import PixelSynthesis, SynthesisOptions, field_order

PRIOR = ImagePrior(input_size=(1, 4, 4), mean=(0.5,), std=(0.25,))  # pixel range [-2, 2]


def _synthesis(generator, **options):
    images = torch.zeros(2, 1, 4, 4)
    return PixelSynthesis(images, PRIOR, generator, **{"lr": 10.0, "betas": (0.5, 0.9), "round_length": 3,
                                                       "warmup": 1, **options})


def test_without_jitter_the_loop_draws_nothing_and_clamps_every_step():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    synthesis = _synthesis(generator)
    images, final = synthesis.run(lambda images, step: ((-images).sum(), {"step": torch.tensor(float(step))}), "t")
    assert torch.equal(generator.get_state(), state)  # SPDFQ's draws stay where they were
    assert images.max().item() == 2.0 and final == {"step": 2.0}


def test_jitter_takes_one_range_per_round():
    generator = torch.Generator().manual_seed(0)
    synthesis = _synthesis(generator, max_shifts=(0, 1), flip_probability=0.0)
    seen = []
    synthesis.run(lambda images, step: seen.append(images.detach().clone()) or (images.sum(), {}), "t")
    assert synthesis.iterations == len(seen) == 6  # two rounds of three steps


def test_an_objective_may_set_the_gradient_itself():
    synthesis = _synthesis(torch.Generator().manual_seed(0))

    def objective(images, step):
        images.grad = torch.ones_like(images)  # as PSAQ-ViT V2's sample step accumulates it over batches
        return images.detach().sum(), {}

    before = synthesis.images.detach().clone()
    synthesis.step(0, objective)  # without the loop's jitter the objective is given the images themselves
    assert (synthesis.images < before).all()  # one Adam step down the gradient it set


def test_field_order_keeps_a_declared_order_and_checks_it():
    @field_order("num_images", "extra", "batch_size", "warmup", "lr", "betas", "tv_weight", "tv_target_range")
    @dataclasses.dataclass
    class Options(SynthesisOptions):
        extra: int = 1

    assert [field.name for field in dataclasses.fields(Options)][:3] == ["num_images", "extra", "batch_size"]
    assert list(dataclasses.asdict(Options(extra=2)))[1] == "extra"
    with pytest.raises(TypeError, match="must list each of its fields once"):
        field_order("num_images")(Options)
