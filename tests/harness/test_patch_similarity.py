import copy
import functools
import math

import pytest
import torch

from harness.model.fused import ENVIRONMENT_SWITCH
from harness.model.instrument import POINTS
from harness.plugin.task import ImagePrior
from harness.priors import patch_similarity, synthesis
from harness.priors.patch_similarity import (
    attn_v_probes, block_entropies, differential_entropy, gaussian_kde, patch_similarities,
    patch_similarity_entropy, patch_similarity_loss,
)
from harness.priors.synthesis import (
    clamp_pixels, pixel_optimizer, random_roll_flip, total_variation, tv_target, warmup_cosine_lr,
)

H = 0.01  # docs/methods.md, PSAQ-ViT, step 5: bandwidth, 10 points, offset 1e-4


def _reference_entropies(attn_v: torch.Tensor, batch_size: int) -> list[float]:
    """The formula of docs/methods.md, PSAQ-ViT, step 5, image by image, window by window, pair by pair, in float64."""
    u = attn_v.double().mean(dim=1)[:, 1:, :]
    windows = u.shape[0] // batch_size
    samples = []
    for b in range(batch_size):
        values = []
        for w in range(windows):
            rows = u[b * windows + w]
            for i in range(rows.shape[0]):
                for j in range(rows.shape[0]):
                    values.append(float(rows[i] @ rows[j] / (rows[i].norm() * rows[j].norm())))
        samples.append(values)
    low, high = min(map(min, samples)), max(map(max, samples))
    points = [low + (high - low) * k / 9 for k in range(10)]
    entropies = []
    for values in samples:
        f = []
        for x in points:
            p = sum(math.exp(-(x - s) ** 2 / (2 * H * H)) for s in values) / (len(values) * H * math.sqrt(2 * math.pi))
            f.append(-(p + 1e-4) * math.log(p + 1e-4))
        entropies.append(sum((points[k + 1] - points[k]) * (f[k] + f[k + 1]) / 2 for k in range(9)))
    return entropies


def test_spread_similarities_have_higher_entropy_than_peaked_ones():
    spread = torch.linspace(-1, 1, 401).unsqueeze(0)
    peaked = 0.3 + 1e-3 * torch.randn(1, 401, generator=torch.Generator().manual_seed(0))
    entropies = []
    for samples in (spread, peaked):
        points = torch.linspace(float(samples.min()), float(samples.max()), 10)
        entropies.append(float(differential_entropy(gaussian_kde(samples, points), points)))
    # U(-1, 1) has entropy log 2; the KDE about halves the density at the two end points, where
    # -p log p happens to be the same (0.25 log 4 = 0.5 log 2), so the trapezoid sum stays near log 2
    assert entropies[0] == pytest.approx(math.log(2), abs=5e-3)
    assert entropies[1] < 0 < entropies[0]


def test_diverse_patches_have_higher_entropy_than_near_identical_ones():
    generator = torch.Generator().manual_seed(0)
    diverse = torch.randn(4, 2, 17, 8, generator=generator)
    similar = torch.ones(4, 2, 17, 8) + 0.05 * torch.randn(4, 2, 17, 8, generator=generator)
    assert patch_similarity_entropy(diverse, 4).min() > patch_similarity_entropy(similar, 4).max()


def test_three_patch_example_matches_hand_computation():
    u = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    offset = torch.tensor([[0.3, -0.2]] * 3)
    heads = torch.stack([torch.tensor(u) + offset, torch.tensor(u) - offset])  # mean over heads = u
    attn_v = torch.cat([torch.full((2, 1, 2), 5.0), heads], dim=1).unsqueeze(0)  # class token first
    a = 1 / math.sqrt(2)
    similarities = [1, 0, a, 0, 1, a, a, a, 1]
    points = [k / 9 for k in range(10)]  # between the min 0 and the max 1
    f = []
    for x in points:
        p = sum(math.exp(-(x - s) ** 2 / (2 * 0.01 ** 2)) for s in similarities) / (9 * 0.01 * math.sqrt(2 * math.pi))
        f.append(-(p + 1e-4) * math.log(p + 1e-4))
    expected = sum((f[k] + f[k + 1]) / 2 / 9 for k in range(9))
    assert torch.allclose(patch_similarities(attn_v, 1), torch.tensor([similarities], dtype=torch.float32), atol=1e-6)
    assert float(patch_similarity_entropy(attn_v, 1)) == pytest.approx(expected, abs=1e-5)
    assert float(patch_similarity_loss([attn_v, attn_v], 1)) == pytest.approx(-2 * expected, abs=1e-5)


def test_swin_windows_are_pooled_per_image():
    batch, windows, tokens = 2, 4, 5
    attn_v = torch.randn(batch * windows, 3, tokens, 8, generator=torch.Generator().manual_seed(0))
    pooled = patch_similarities(attn_v, batch)
    assert pooled.shape == (batch, windows * (tokens - 1) ** 2)
    per_window = patch_similarities(attn_v, batch * windows)  # each window as its own sample
    assert torch.equal(pooled[1], per_window[windows:].flatten())


def _record_kernel_forms(monkeypatch) -> list[str]:
    """The list that gets the name of the kernel form chosen for every grid that spans its samples."""
    names, kernel_form = [], patch_similarity._kernel_form

    def recorded(points, bandwidth):
        form = kernel_form(points, bandwidth)
        names.append(form.name)
        return form
    monkeypatch.setattr(patch_similarity, "_kernel_form", recorded)
    return names


# attn·v spreads and the kernel form their grids get: tokens sharing one large component have
# similarities a few bandwidths apart (as random-init DeiT-T's), independent tokens span ~[-1, 1]
SPREADS = {"narrow": (0.15, "factorized"), "medium": (0.5, "direct"), "wide": (None, "direct")}


def _spread(attn_v: torch.Tensor, spread: str) -> torch.Tensor:
    scale = SPREADS[spread][0]
    return attn_v if scale is None else 1.0 + scale * attn_v


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("shape, batch_size", [((3, 2, 9, 8), 3), ((2 * 4, 2, 16, 8), 2)], ids=["vit", "swin"])
def test_vectorized_entropy_matches_float64_loop(shape, batch_size, spread, monkeypatch):
    """Every kernel form against that formula in float64.

    Narrow similarities are compared in float64: near 1, float32's own rounding of a cosine moves
    the entropy by ~1e-5 whichever form runs (measured: 1.0e-5 and 1.6e-5 for two forms).
    """
    attn_v = _spread(torch.randn(*shape, generator=torch.Generator().manual_seed(1)), spread)
    attn_v, tolerance = (attn_v.double(), 1e-10) if spread == "narrow" else (attn_v, 1e-5)
    forms = _record_kernel_forms(monkeypatch)
    expected = torch.tensor(_reference_entropies(attn_v, batch_size), dtype=attn_v.dtype)
    assert torch.allclose(patch_similarity_entropy(attn_v, batch_size), expected, atol=tolerance, rtol=0)
    assert forms == [SPREADS[spread][1]]


def test_packed_similarities_hold_each_windows_upper_triangle_then_its_diagonal_with_multiplicities():
    batch, windows, n = 2, 3, 5
    attn_v = torch.randn(batch * windows, 2, n + 1, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    packed, multiplicities = patch_similarity.packed_similarities(attn_v, batch)
    matrices = patch_similarity.similarity_matrices(attn_v).view(batch, windows, n, n)
    rows, columns = torch.triu_indices(n, n, offset=1)
    uppers = windows * n * (n - 1) // 2
    assert packed.shape == (batch, uppers + windows * n)
    assert torch.equal(packed[:, :uppers], matrices[:, :, rows, columns].reshape(batch, -1))
    assert torch.equal(packed[:, uppers:], matrices.diagonal(dim1=2, dim2=3).reshape(batch, -1))
    assert multiplicities.tolist() == [2.0] * uppers + [1.0] * windows * n  # every entry of Γ once: n² per window


def test_weighted_kde_equals_the_kde_of_repeated_samples():
    samples = torch.rand(2, 7, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weights = torch.tensor([2.0, 1, 1, 3, 1, 2, 1], dtype=torch.float64)
    repeated = samples.repeat_interleave(weights.long(), dim=1)
    points = torch.linspace(0, 1, 10, dtype=torch.float64)
    assert torch.allclose(gaussian_kde(samples, points, 0.05, weights), gaussian_kde(repeated, points, 0.05),
                          atol=1e-12, rtol=0)


def test_packed_similarities_gradient_is_exact():
    """The hand-written backward (symmetric gather, one product) against numerical differences."""
    tokens = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tokens = torch.nn.functional.normalize(tokens, dim=-1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: patch_similarity._PackedSimilarities.apply(t, 2), (tokens,))


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_kernels_match_the_eager_ones_in_value_and_gradient(monkeypatch, dtype, tolerance, spread):
    """Fusion may reorder the sums, nothing else: the entropy and its gradient agree with eager torch.

    Similarities near 1 (narrow, medium) get 5x the float32 tolerance: rounding of the cosines alone
    moves the entropy by up to 1e-5 and its gradient by 1.6-3.2e-5 of its largest entry (measured).
    """
    attn_v = _spread(torch.randn(6, 2, 33, 8, generator=torch.Generator().manual_seed(6), dtype=dtype), spread)
    tolerance *= 5 if spread != "wide" and dtype == torch.float32 else 1
    entropy = functools.partial(patch_similarity_entropy, batch_size=3)
    forms = _record_kernel_forms(monkeypatch)
    (eager, eager_grad), (fused, fused_grad) = _eager_and_fused(monkeypatch, entropy, attn_v)
    skip_unless_compiled(patch_similarity._KERNELS)
    assert forms == [SPREADS[spread][1]] * 2
    assert torch.allclose(eager, fused, atol=tolerance, rtol=0)
    assert torch.allclose(eager_grad, fused_grad, atol=tolerance * eager_grad.abs().max(), rtol=0)


def skip_unless_compiled(kernels) -> None:
    """After a fused run: the comparison means something only if compiled kernels really ran."""
    if not kernels.enabled:
        pytest.skip(f"fused kernels not used here ({kernels.failure}); the eager fallback ran")


def _eager_and_fused(monkeypatch, function, inputs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(value, gradient of its sum) of ``function(inputs)`` with fusion off, then on."""
    results = []
    for switch in ("0", "1"):
        monkeypatch.setenv(ENVIRONMENT_SWITCH, switch)
        leaf = inputs.clone().requires_grad_(True)
        value = function(leaf)
        value.sum().backward()
        results.append((value.detach(), leaf.grad))
    return results


# grid widths (in bandwidths, 10 points) and the form each gets
WIDTHS = {"factorized": 4.0, "direct": 50.0}


def _samples_on_a_grid(width: float, dtype: torch.dtype, count: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, count) samples spread over ``width`` bandwidths and the 10-point grid that spans them."""
    samples = 0.3 + width * H * torch.rand(3, count, generator=torch.Generator().manual_seed(8), dtype=dtype)
    return samples, samples.min() + (samples.max() - samples.min()) * torch.linspace(0, 1, 10, dtype=dtype)


@pytest.mark.parametrize("form", WIDTHS)
def test_kernel_sum_gradient_is_exact(form, monkeypatch):
    samples, points = _samples_on_a_grid(WIDTHS[form], torch.float64, count=40)
    forms = _record_kernel_forms(monkeypatch)
    kernel_sum = functools.partial(patch_similarity.kernel_sum, points=points, bandwidth=H, grid_spans_samples=True)
    assert torch.autograd.gradcheck(kernel_sum, (samples.requires_grad_(True),))
    assert set(forms) == {form}


def test_grids_at_most_ten_bandwidths_wide_get_the_factorized_form():
    """Up to 10h apart, a sample's farthest term is e^-50, the smallest the direct form keeps."""
    def form(width: float, num_points: int = 10) -> str:
        return patch_similarity._kernel_form(torch.linspace(0.3, 0.3 + width * H, num_points), H).name
    assert (form(0), form(10), form(10.01), form(150)) == ("factorized", "factorized", "direct", "direct")
    assert form(5, num_points=2) == "factorized" and form(5, num_points=1) == "direct"


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("width", [0.3, 4.0, 10.0])
def test_factorized_form_equals_the_direct_one_in_value_and_gradient(width, dtype, tolerance, monkeypatch):
    """Same sums and gradients; float32 differs by rounding only (measured: 1e-6 of the largest gradient)."""
    samples, points = _samples_on_a_grid(width, dtype)
    generator = torch.Generator().manual_seed(9)
    weights = torch.randint(1, 3, (500,), generator=generator).to(dtype)
    incoming = torch.randn(3, 10, generator=generator, dtype=dtype)
    forms = _record_kernel_forms(monkeypatch)
    results = []
    for spans in (False, True):
        leaf = samples.clone().requires_grad_(True)
        sums = patch_similarity.kernel_sum(leaf, points, H, weights, grid_spans_samples=spans)
        (sums * incoming).sum().backward()
        results.append((sums.detach(), leaf.grad))
    (direct, direct_grad), (grid, grid_grad) = results
    assert forms == ["factorized"]
    assert torch.allclose(grid, direct, rtol=tolerance, atol=0)
    assert torch.allclose(grid_grad, direct_grad, atol=tolerance * direct_grad.abs().max(), rtol=0)


@pytest.mark.parametrize("shape, batch_size", [((3, 2, 9, 8), 3), ((2 * 4, 2, 16, 8), 2)], ids=["vit", "swin"])
def test_symmetric_evaluation_matches_the_full_matrix_in_value_and_gradient(shape, batch_size):
    """Upper triangle twice plus diagonal = every (n-1)² entry, for the entropy and its gradient."""
    attn_v = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for full in (False, True):
        leaf = attn_v.clone().requires_grad_(True)
        if full:
            similarities = patch_similarities(leaf, batch_size)
            low, high = similarities.detach().aminmax()
            points = low + (high - low) * torch.linspace(0, 1, 10, dtype=torch.float64)
            entropy = differential_entropy(gaussian_kde(similarities, points), points)
        else:
            entropy = patch_similarity_entropy(leaf, batch_size)
        entropy.sum().backward()
        results.append((entropy.detach(), leaf.grad))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-10)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-8)


def _structure(model):
    return ([(name, type(module)) for name, module in model.named_modules()],
            {key: value.clone() for key, value in model.state_dict().items()})


@pytest.mark.parametrize("fixture, expected_shapes", [
    ("tiny_vit", [(2, 2, 17, 16)] * 2),
    ("tiny_swin", [(2 * 4, 2, 16, 8)] * 2 + [(2, 2, 16, 16)] * 2),
])
def test_probes_capture_attn_v_and_leave_the_model_as_it_was(fixture, expected_shapes, request):
    model = request.getfixturevalue(fixture)
    names_before, state_before = _structure(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        with attn_v_probes(model) as probes:
            probed = model(x)
            assert [tuple(probe.value.shape) for probe in probes] == expected_shapes
    names_after, state_after = _structure(model)
    assert names_after == names_before and not any(POINTS in name for name, _ in names_after)
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[key], state_before[key]) for key in state_before)
    assert torch.allclose(probed, reference, atol=1e-5)


def test_probes_keep_points_already_attached(tiny_vit):
    from harness.model.instrument import attach_point

    attention = tiny_vit.blocks[0].attn
    marker = torch.nn.Identity()
    attach_point(attention, "attn_v", marker)
    with attn_v_probes(tiny_vit):
        pass
    assert getattr(attention, POINTS)["attn_v"] is marker


def test_block_entropies_one_finite_value_per_block(tiny_vit):
    copy_before = copy.deepcopy(tiny_vit.state_dict())
    values = block_entropies(tiny_vit, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert all(torch.equal(copy_before[k], v) for k, v in tiny_vit.state_dict().items())


def test_schedule_warms_up_decays_and_restarts_every_round():
    lr = [warmup_cosine_lr(i, 0.2, 500, 100) for i in (0, 99, 100, 300, 499, 500, 600)]
    assert lr[0] == pytest.approx(0.2 / 100)
    assert lr[1] == pytest.approx(0.2) and lr[2] == pytest.approx(0.2)
    assert lr[3] == pytest.approx(0.1)
    assert lr[4] == pytest.approx(0.1 * (1 + math.cos(math.pi * 399 / 400))) and lr[4] < 1e-5
    assert lr[5] == pytest.approx(lr[0]) and lr[6] == pytest.approx(0.2)  # round 2 restarts


def test_clamp_bounds_follow_the_models_mean_and_std():
    digits = ImagePrior(input_size=(1, 16, 16), mean=(0.5,), std=(0.5,), num_classes=10)
    low, high = digits.clamp_bounds()
    assert low.flatten().tolist() == [-1.0] and high.flatten().tolist() == [1.0]
    imagenet = ImagePrior(input_size=(3, 4, 4), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = torch.linspace(-5, 5, 16).repeat(3).view(1, 3, 4, 4)
    clamped = clamp_pixels(images, imagenet)
    for c, (m, s) in enumerate(zip(imagenet.mean, imagenet.std)):
        assert clamped[:, c].min() == pytest.approx(-m / s) and clamped[:, c].max() == pytest.approx((1 - m) / s)
    inside = (images >= clamped.amin(dim=(2, 3), keepdim=True)) & (images <= clamped.amax(dim=(2, 3), keepdim=True))
    assert torch.equal(clamped[inside], images[inside])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_total_variation_matches_the_eager_one_in_value_and_gradient(monkeypatch, dtype, tolerance):
    images = torch.randn(3, 2, 9, 11, generator=torch.Generator().manual_seed(8), dtype=dtype)
    (eager, eager_grad), (fused, fused_grad) = _eager_and_fused(monkeypatch, lambda x: (total_variation(x) - 50).abs(),
                                                                images)
    skip_unless_compiled(synthesis._KERNELS)
    assert torch.allclose(eager, fused, atol=0, rtol=tolerance)
    assert torch.allclose(eager_grad, fused_grad, atol=tolerance, rtol=0)


def test_total_variation_backward_is_autograds_of_the_formula():
    """The hand-written backward (recomputed differences) against autograd through the four slices."""
    images = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.autograd.gradcheck(total_variation, (images.clone().requires_grad_(True),))
    leaf = images.clone().requires_grad_(True)
    sum(torch.linalg.vector_norm(difference) for difference in synthesis._differences(leaf)).backward()
    mine = images.clone().requires_grad_(True)
    total_variation(mine).backward()
    assert torch.allclose(mine.grad, leaf.grad, atol=1e-12, rtol=0)
    flat = torch.ones(2, 3, 7, 6, requires_grad=True)  # every norm 0: gradient 0, as torch's norm gives
    value = total_variation(flat)
    value.backward()
    assert float(value.detach()) == 0.0 and torch.equal(flat.grad, torch.zeros_like(flat))


def test_pixel_optimizer_takes_the_loop_adams_steps():
    start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    grads = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10 + step)) for step in range(3)]
    results = []
    for make in (lambda x: pixel_optimizer(x, 0.2, (0.5, 0.9)),
                 lambda x: torch.optim.Adam([x], lr=0.2, betas=(0.5, 0.9), eps=1e-8)):
        images = start.clone().requires_grad_(True)
        optimizer = make(images)
        for grad in grads:
            images.grad = grad.clone()
            optimizer.step()
        results.append(images.detach())
    assert not torch.equal(results[0], start)
    assert torch.allclose(results[0], results[1], atol=1e-6, rtol=0)


def test_total_variation_and_its_target():
    image = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert float(total_variation(image)) == pytest.approx(math.sqrt(2) + math.sqrt(8) + 1 + 3)
    reference = tv_target((32, 3, 224, 224), torch.Generator().manual_seed(3))
    assert 2500 <= reference <= 3000
    assert tv_target((32, 3, 224, 224), torch.Generator().manual_seed(3), scaling="linear") == reference
    digits = tv_target((32, 1, 16, 16), torch.Generator().manual_seed(3))
    assert digits == pytest.approx(reference / math.sqrt(3 * 196))  # Frobenius norms: sqrt of the element count
    linear = tv_target((32, 1, 16, 16), torch.Generator().manual_seed(3), scaling="linear")
    assert linear == pytest.approx(reference / 196)  # B·H·W


def test_roll_flip_is_a_seeded_cyclic_shift_and_flip():
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    assert torch.equal(random_roll_flip(images, 0, 0.0, torch.Generator().manual_seed(0)), images)
    assert torch.equal(random_roll_flip(images, 0, 1.0, torch.Generator().manual_seed(0)), images.flip(3))
    for seed in range(20):
        out = random_roll_flip(images, 30, 0.5, torch.Generator().manual_seed(seed))
        assert torch.equal(out, random_roll_flip(images, 30, 0.5, torch.Generator().manual_seed(seed)))
        candidates = [torch.roll(images, (k, k), (2, 3)) for k in range(16)]  # ±30 wraps around 16 px
        assert any(torch.equal(out, c) or torch.equal(out, c.flip(3)) for c in candidates)
