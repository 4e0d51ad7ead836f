import pytest
import torch

from harness.priors.attention_prior import (aligned_blocks, attention_alignment_loss, attention_probes,
                                            gaussian_mixture_priors, patch_attention)

torch.set_num_threads(1)


def _modes(grid_map: torch.Tensor) -> set[tuple[int, int]]:
    """Cells above half the peak: with narrow Gaussians, exactly the K peaks (neighbours get ~e^-12)."""
    return {tuple(p) for p in (grid_map > 0.5 * grid_map.max()).nonzero().tolist()}


def test_priors_sum_to_one_and_peak_at_the_drawn_centres():
    maps, centres = gaussian_mixture_priors(6, (14, 14), torch.Generator().manual_seed(0), width_range=(0.01, 0.02))  # σ <= 0.28 patch
    assert maps.shape == (6, 196) and centres.shape == (6, 5, 2)
    assert torch.allclose(maps.sum(-1), torch.ones(6)) and (maps >= 0).all()
    for grid_map, drawn in zip(maps.view(6, 14, 14), centres.long()):
        assert len({tuple(c) for c in drawn.tolist()}) == 5  # K = 5 distinct centres
        assert _modes(grid_map) == {tuple(c) for c in drawn.tolist()}


def test_priors_are_seeded_and_vary_with_the_seed():
    first, _ = gaussian_mixture_priors(3, (4, 4), torch.Generator().manual_seed(1))
    again, _ = gaussian_mixture_priors(3, (4, 4), torch.Generator().manual_seed(1))
    other, _ = gaussian_mixture_priors(3, (4, 4), torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.allclose(first, other)
    crowded, centres = gaussian_mixture_priors(2, (2, 2), torch.Generator().manual_seed(0), num_modes=5)
    assert centres.shape == (2, 5, 2) and torch.allclose(crowded.sum(-1), torch.ones(2))  # K > patches


def test_aligned_blocks_are_the_deeper_half_weighted_by_depth():
    assert aligned_blocks(4) == [(1, 0.5), (2, 0.75), (3, 1.0)]
    assert [index for index, _ in aligned_blocks(12)] == list(range(5, 12)) and aligned_blocks(12)[-1][1] == 1.0


def test_alignment_loss_is_zero_at_the_prior_and_weighted_mse_otherwise():
    priors = [gaussian_mixture_priors(2 * 3, (4, 4), torch.Generator().manual_seed(s))[0].view(2, 3, 16) for s in (0, 1)]
    assert attention_alignment_loss(priors, priors, [0.5, 1.0]).item() == 0.0
    uniform = [torch.full((2, 3, 16), 1 / 16) for _ in priors]
    expected = sum(w * torch.nn.functional.mse_loss(u[:, h], p[:, h]).item()
                   for u, p, w in zip(uniform, priors, [0.5, 1.0]) for h in range(3))  # Σ_l Σ_h (l/L)·MSE
    assert expected > 0 and attention_alignment_loss(uniform, priors, [0.5, 1.0]).item() == pytest.approx(expected)


def test_patch_attention_takes_the_class_row_or_the_query_average():
    attn = torch.rand(2, 3, 17, 17).softmax(-1)
    assert torch.equal(patch_attention(attn, 1, query_average=False), attn[:, :, 0, 1:])
    assert torch.allclose(patch_attention(attn, 1, query_average=True), attn.mean(-2))


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_probes_capture_post_softmax_maps_and_restore_the_model(fixture, request):
    model = request.getfixturevalue(fixture)
    modules = [(name, type(m)) for name, m in model.named_modules()]
    with torch.no_grad(), attention_probes(model) as probes:
        model(torch.randn(2, 3, 32, 32))
        maps = [probe.value for _, probe in probes]
    assert len(maps) == (2 if fixture == "tiny_vit" else 4)
    for attn in maps:
        assert attn.shape[-1] == attn.shape[-2] and torch.allclose(attn.sum(-1), torch.ones(attn.shape[:-1]), atol=1e-5)
    assert [(name, type(m)) for name, m in model.named_modules()] == modules
