"""The patch-similarity prior of PSAQ-ViT (docs/methods.md, PSAQ-ViT, step 5, L_PSE).

A trained ViT answers real images with diverse attention outputs across patches; noise gives
near-uniform similarities. The differential entropy of each image's pairwise patch similarities,
estimated with a Gaussian KDE, measures that diversity, and synthesis maximizes it. The attn·v
products are captured with probes at the ``attn_v`` point of :mod:`harness.model.arch`'s instrumented
attention (per window for Swin).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model.fused import FusedKernels
from harness.plugin.options import at_least, positive
from harness.priors.probes import Probe, attention_point_probes

ATTN_V = "attn_v"
BANDWIDTH = 0.01  # docs/methods.md, PSAQ-ViT, step 5: KDE bandwidth
NUM_POINTS = 10  # step 5: evaluation points between the batch's min and max similarity
ENTROPY_OFFSET = 1e-4  # step 5: -(p + 1e-4) log(p + 1e-4)
NEGLIGIBLE_EXPONENT = -50.0  # kernel terms below e^-50 are dropped (see _kernel)


@contextlib.contextmanager
def attn_v_probes(model: nn.Module) -> Iterator[list[Probe]]:
    """Instrument ``model`` and probe the attn·v product of every attention module, in block order."""
    with attention_point_probes(model, ATTN_V) as pairs:
        yield [probe for _, probe in pairs]


def patch_similarities(attn_v: Tensor, batch_size: int) -> Tensor:
    """(B·nW, heads, n, d) attn·v outputs -> (B, nW·(n-1)²) cosine similarities, pooled per image.

    The windows of an image are pooled into one sample (timm's window partition is image-major).
    """
    return similarity_matrices(attn_v).reshape(batch_size, -1)


def similarity_matrices(attn_v: Tensor) -> Tensor:
    """(B·nW, heads, n, d) attn·v outputs -> (B·nW, n-1, n-1) cosine similarities of every window.

    Step 5 (docs/methods.md, PSAQ-ViT): heads averaged, the first token of every window dropped (ViT/DeiT: nW = 1 and it is
    the class token; Swin: the first token of each window, as the paper's code does), all
    pairs of rows compared (diagonal included).
    """
    tokens = unit_tokens(attn_v)
    return tokens @ tokens.transpose(1, 2)


def unit_tokens(attn_v: Tensor) -> Tensor:
    """(B·nW, heads, n, d) -> (B·nW, n-1, d): heads averaged, first token dropped, rows of unit length.

    The heads are summed, not averaged: the average's direction is the sum's, so the similarities
    are the same (the norm floor scales with them), and a sum's backward broadcasts where a mean's
    divides a full copy of every head's gradient. Fused (:mod:`harness.model.fused`): DeiT-T's L_PSE,
    forward and backward at batch 32, took 177 ms with these steps eager and 164 ms fused.
    """
    return _KERNELS.pick(_unit_tokens)(attn_v)


def _unit_tokens(attn_v: Tensor) -> Tensor:
    return F.normalize(attn_v.sum(dim=1)[:, 1:, :], dim=-1, eps=1e-8 * attn_v.shape[1])


def packed_similarities(attn_v: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """The similarities of :func:`patch_similarities` once each, with how often each occurs.

    Off the diagonal, Γ holds every value twice ((i, j) and (j, i)). Returns every window's strict
    upper triangle, then every window's diagonal, pooled per image, (B, nW·(n(n-1)/2 + n)), and
    their multiplicities in Γ (2, then 1), a weighted sample equal to the full one at half the size.
    """
    tokens = unit_tokens(attn_v)
    _, _, multiplicities = _layout(tokens.shape[0] // batch_size, tokens.shape[1], str(tokens.device))
    return _PackedSimilarities.apply(tokens, batch_size), multiplicities.to(tokens.dtype)


class _PackedSimilarities(torch.autograd.Function):
    """Unit tokens (B·nW, n, d) -> Γ's entries in the packed layout of :func:`_layout`.

    Written out because autograd's gather backward scatters into a zero-filled copy of Γ and then
    multiplies by the tokens twice; the symmetric gradient matrix is instead gathered directly
    (every entry written once) and multiplied once: d(t_i·t_j) reaches both rows, and t_i·t_i twice.
    """

    @staticmethod
    def forward(ctx, tokens: Tensor, batch_size: int) -> Tensor:
        positions, symmetric, _ = _layout(tokens.shape[0] // batch_size, tokens.shape[1], str(tokens.device))
        ctx.save_for_backward(tokens, symmetric)
        return (tokens @ tokens.transpose(1, 2)).view(batch_size, -1).index_select(1, positions)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        tokens, symmetric = ctx.saved_tensors
        n = tokens.shape[1]
        matrices = grad.contiguous().index_select(1, symmetric).view(-1, n, n)
        matrices.diagonal(dim1=1, dim2=2).mul_(2)
        return matrices @ tokens, None


@functools.lru_cache(maxsize=16)
def _layout(windows: int, n: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """Index maps between an image's ``windows`` flattened n x n matrices and the packed layout.

    ``positions``: where each packed entry lies in the matrices (uppers of every window, then
    diagonals); ``symmetric``: for each matrix entry, its packed slot ((i, j) and (j, i) share one);
    ``multiplicities``: how many matrix entries each packed slot stands for.
    """
    rows, columns = torch.triu_indices(n, n, offset=1)
    diagonal = torch.arange(n)
    starts = torch.arange(windows).unsqueeze(1) * n * n
    positions = torch.cat([(starts + rows * n + columns).flatten(), (starts + diagonal * (n + 1)).flatten()])
    upper_slots = torch.arange(windows * rows.numel()).view(windows, -1)
    symmetric = torch.empty(windows, n, n, dtype=torch.long)
    symmetric[:, rows, columns] = upper_slots
    symmetric[:, columns, rows] = upper_slots
    symmetric[:, diagonal, diagonal] = upper_slots.numel() + torch.arange(windows * n).view(windows, n)
    multiplicities = torch.ones(positions.numel())
    multiplicities[:upper_slots.numel()] = 2
    return positions.to(device), symmetric.flatten().to(device), multiplicities.to(device)


def gaussian_kde(samples: Tensor, points: Tensor, bandwidth: float = BANDWIDTH,
                 weights: Tensor | None = None, *, grid_spans_samples: bool = False) -> Tensor:
    """Density of each row of ``samples`` (B, M) at ``points`` (K,) -> (B, K).

    p(x) = Σ_i w_i N(x; s_i, h²) / Σ_i w_i; without ``weights`` (M,), every sample counts once.
    ``grid_spans_samples``: see :func:`kernel_sum`.
    """
    total = samples.shape[1] if weights is None else weights.sum()
    sums = kernel_sum(samples, points, bandwidth, weights, grid_spans_samples=grid_spans_samples)
    return sums / (total * bandwidth * math.sqrt(2 * math.pi))


def kernel_sum(samples: Tensor, points: Tensor, bandwidth: float, weights: Tensor | None = None, *,
               grid_spans_samples: bool = False) -> Tensor:
    """Σ_i w_i exp(-(x_k - s_i)² / 2h²) for every row of ``samples`` (B, M) and every point -> (B, K).

    The points are constants (step 5: detached limits). The (B, K, M) kernel is never stored:
    forward and backward each walk the points over the (B, M) samples, so memory stays that of the
    samples whatever K is; the fused kernels (:mod:`harness.model.fused`) make each walk one pass over
    the samples, the backward recomputing the kernel.

    ``grid_spans_samples`` says the points are evenly spaced from the samples' min to their max
    (step 5's grid). Such a grid allows a cheaper form with the same terms (:func:`_kernel_form`),
    two exponentials per sample instead of K, the same sums to float32 rounding.
    """
    weights = samples.new_ones(samples.shape[1]) if weights is None else weights
    points = points.detach()
    if not grid_spans_samples or points.numel() < 2:
        return _KernelSum.apply(samples, points, weights, bandwidth, DIRECT, None)
    if _width_read_on_host(points):
        return _KernelSum.apply(samples, points, weights, bandwidth, _kernel_form(points, bandwidth), None)
    return _KernelSum.apply(samples, points, weights, bandwidth, ON_DEVICE, _grid_is_narrow(points, bandwidth))


class KernelForm(NamedTuple):
    """One exact way to evaluate the kernel sums and their gradient w.r.t. the samples.

    The functions take (samples, points, weights, scale) and (samples, points, weights, grad, scale),
    plus, for the form chosen on the device, the grid's narrowness flag last.
    """

    name: str
    sums: Callable[..., Tensor]
    gradients: Callable[..., Tensor]


class _KernelSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, samples: Tensor, points: Tensor, weights: Tensor, bandwidth: float, form: KernelForm,
                narrow: Tensor | None) -> Tensor:
        flag = () if narrow is None else (narrow,)
        ctx.save_for_backward(samples, points, weights, *flag)
        ctx.bandwidth, ctx.gradients = bandwidth, form.gradients
        return _KERNELS.pick(form.sums)(samples, points, weights, -0.5 / bandwidth ** 2, *flag)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        samples, points, weights, *flag = ctx.saved_tensors
        gradients = _KERNELS.pick(ctx.gradients)(samples, points, weights, grad.contiguous(),
                                                 -0.5 / ctx.bandwidth ** 2, *flag)
        return gradients, None, None, None, None, None


def _kernel(samples: Tensor, point: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """exp(scale·(x - s_i)²) and x - s_i for one point x, both (B, M); scale = -1/2h².

    Terms with an exponent below ``NEGLIGIBLE_EXPONENT`` are exact zeros. Their sum adds at most
    M·2e-22 to a kernel sum, under 1e-20 to the density, which float32 resolves to ~1e-11 beside its
    1e-4 offset, so values and gradients are unchanged (parity tests at 1e-5 and 1e-8); kept, they
    would cost time twice: torch's exp is ~10x slower on inputs that underflow, and their products
    with the incoming gradient are subnormal numbers, slow on x86 (the fused backward of DeiT-T's
    12 blocks took 574 ms with terms down to e^-80 kept, 61 ms with this cut).
    """
    distances = point - samples
    exponents = distances.square().mul_(scale)
    negligible = exponents < NEGLIGIBLE_EXPONENT
    return exponents.clamp_(min=NEGLIGIBLE_EXPONENT).exp_().masked_fill_(negligible, 0.0), distances


def _kernel_sums(samples: Tensor, points: Tensor, weights: Tensor, scale: float) -> Tensor:
    return torch.stack([(_kernel(samples, point, scale)[0] * weights).sum(dim=-1) for point in points.unbind()],
                       dim=-1)


def _kernel_gradients(samples: Tensor, points: Tensor, weights: Tensor, grad: Tensor, scale: float) -> Tensor:
    # d/ds exp(-(x - s)² / 2h²) = exp(-(x - s)² / 2h²) · (x - s) / h², and 1/h² = -2·scale
    total = torch.zeros_like(samples)
    for point, point_grad in zip(points.unbind(), grad.unbind(dim=1)):
        kernel, distances = _kernel(samples, point, scale)
        total += point_grad.unsqueeze(1) * kernel * distances
    return total.mul_(weights * (-2 * scale))


def _kernel_form(points: Tensor, bandwidth: float) -> KernelForm:
    """The cheapest exact form for a grid of ``points`` that spans the samples, read on the host.

    On a grid at most 10h wide no sample is farther than 10h from any point, so every term is
    above e^-50 and kept by :func:`_kernel` too (``NEGLIGIBLE_EXPONENT``), and none of the factors
    of :func:`_grid_terms` leaves float32's normal range: the Gaussian factorizes along the grid.
    Random-init DeiT-T's grids are 1.6-4.4h wide; the trained digits ViTs' are 116-187h wide, and
    there the direct form runs.
    """
    if points.numel() < 2:
        return DIRECT
    width = float(points[-1] - points[0]) / bandwidth
    return FACTORIZED if -0.5 * width ** 2 >= NEGLIGIBLE_EXPONENT else DIRECT


def _width_read_on_host(points: Tensor) -> bool:
    """Whether the form is picked by reading the grid's width on the host: free for CPU tensors; on an
    accelerator the read would wait for every queued kernel, every block and iteration, so there both
    forms run and the device keeps the one :func:`_kernel_form` would pick (:data:`ON_DEVICE`)."""
    return points.device.type == "cpu"


def _grid_is_narrow(points: Tensor, bandwidth: float) -> Tensor:
    """:func:`_kernel_form`'s test as a 0-dim bool tensor on the points' device (float64, as the host's)."""
    width = (points[-1] - points[0]).double() / bandwidth
    return -0.5 * (width * width) >= NEGLIGIBLE_EXPONENT


def _grid_terms(samples: Tensor, points: Tensor, weights: Tensor, scale: float) -> Iterator[tuple[int, Tensor]]:
    """(k, w_i·exp(scale·(x_k - s_i)²)) for every point x_k of an evenly spaced grid of K points.

    From the middle point c = K // 2, with u = s - x_c and step Δ, x_k - s = (k - c)Δ - u, so one
    step along the grid multiplies a term by exp(-2·scale·Δ·u) (per sample) times
    exp(scale·Δ²·(2d ∓ 1)) at d = k - c (a constant): the walk starts from the middle term and goes
    up, then down, with two exponentials per sample.
    """
    size = points.shape[0]
    middle, step = size // 2, (points[-1] - points[0]) / (size - 1)
    offsets = samples - points[middle]
    middle_terms = offsets.square().mul(scale).exp().mul(weights)
    ratio_up = offsets.mul(-2 * scale * step).exp()
    yield middle, middle_terms
    for direction, ratio, stop in ((1, ratio_up, size), (-1, ratio_up.reciprocal(), -1)):
        terms = middle_terms
        for k in range(middle + direction, stop, direction):
            terms = terms * ratio * torch.exp(scale * step.square() * (2 * (k - middle) - direction) * direction)
            yield k, terms


def _grid_kernel_sums(samples: Tensor, points: Tensor, weights: Tensor, scale: float) -> Tensor:
    sums = {k: terms.sum(dim=-1) for k, terms in _grid_terms(samples, points, weights, scale)}
    return torch.stack([sums[k] for k in range(points.shape[0])], dim=-1)


def _grid_kernel_gradients(samples: Tensor, points: Tensor, weights: Tensor, grad: Tensor, scale: float) -> Tensor:
    # as _kernel_gradients; the distances are to the points themselves, as the direct kernel's are
    total = torch.zeros_like(samples)
    for k, terms in _grid_terms(samples, points, weights, scale):
        total = total + grad[:, k:k + 1] * terms * (points[k] - samples)
    return total * (-2 * scale)


def _chosen_kernel_sums(samples: Tensor, points: Tensor, weights: Tensor, scale: float, narrow: Tensor) -> Tensor:
    # a wide grid's factorized terms may overflow; the selection drops them, the direct sums are finite
    return torch.where(narrow, _grid_kernel_sums(samples, points, weights, scale),
                       _kernel_sums(samples, points, weights, scale))


def _chosen_kernel_gradients(samples: Tensor, points: Tensor, weights: Tensor, grad: Tensor, scale: float,
                             narrow: Tensor) -> Tensor:
    return torch.where(narrow, _grid_kernel_gradients(samples, points, weights, grad, scale),
                       _kernel_gradients(samples, points, weights, grad, scale))


DIRECT = KernelForm("direct", _kernel_sums, _kernel_gradients)
FACTORIZED = KernelForm("factorized", _grid_kernel_sums, _grid_kernel_gradients)
ON_DEVICE = KernelForm("chosen on the device", _chosen_kernel_sums, _chosen_kernel_gradients)
_KERNELS = FusedKernels("the patch-similarity prior", probe=lambda: _exercise_kernels())


def differential_entropy(density: Tensor, points: Tensor, offset: float = ENTROPY_OFFSET) -> Tensor:
    """Step 5: trapezoid integral over ``points`` of -(p + offset) log(p + offset), per row."""
    shifted = density + offset
    return torch.trapezoid(-shifted * shifted.log(), points, dim=-1)


def patch_similarity_entropy(attn_v: Tensor, batch_size: int, bandwidth: float = BANDWIDTH,
                             num_points: int = NUM_POINTS, offset: float = ENTROPY_OFFSET) -> Tensor:
    """H_b of every image for one block -> (B,); one batched computation over all images.

    Step 5: the KDE of all (n-1)² similarities of a window, diagonal included, evaluated at
    ``num_points`` points evenly spaced between the min and max similarity of the whole batch; these
    limits are constants (detached). The similarity matrix is symmetric, so the kernel is evaluated
    once per distinct entry, weighted by how often it occurs (:func:`packed_similarities`): the same
    density at half the cost.
    """
    similarities, multiplicities = packed_similarities(attn_v, batch_size)
    low, high = similarities.detach().aminmax()
    points = low + (high - low) * torch.linspace(0, 1, num_points, device=low.device, dtype=low.dtype)
    density = gaussian_kde(similarities, points, bandwidth, multiplicities, grid_spans_samples=True)
    return differential_entropy(density, points, offset)


def _exercise_kernels() -> None:
    """Every fused kernel, forward and backward, in both kernel forms, with and without autograd, at
    sizes that take the vectorized and parallel loops (a miscompiled kernel may be right on tiny ones)."""
    generator = torch.Generator().manual_seed(0)
    for spread in (1e-3, None):  # tokens nearly parallel: a narrow grid (factorized); random: wide (direct)
        attn_v = torch.randn(8, 3, 65, 16, generator=generator)
        attn_v = attn_v if spread is None else 1.0 + spread * attn_v
        with torch.no_grad():
            patch_similarity_entropy(attn_v, batch_size=4)
        patch_similarity_entropy(attn_v.requires_grad_(True), batch_size=4).sum().backward()


def patch_similarity_loss(attn_v_outputs: Iterable[Tensor], batch_size: int, bandwidth: float = BANDWIDTH,
                          num_points: int = NUM_POINTS, offset: float = ENTROPY_OFFSET) -> Tensor:
    """L_PSE = -Σ_l mean_b H_{l,b} (step 5: the entropy is maximized)."""
    return -sum(patch_similarity_entropy(attn_v, batch_size, bandwidth, num_points, offset).mean()
                for attn_v in attn_v_outputs)


@dataclass
class PatchSimilarityOptions:
    """L_PSE's hyper-parameters (docs/methods.md, PSAQ-ViT, step 5), for every method keeping the prior."""

    bandwidth: float = positive(BANDWIDTH)  # step 5: KDE bandwidth
    kde_points: int = at_least(2, NUM_POINTS)  # step 5: KDE evaluation points
    entropy_offset: float = positive(ENTROPY_OFFSET)  # step 5: -(p + 1e-4) log(p + 1e-4)

    def __post_init__(self) -> None:
        if self.kde_points < 2:
            raise ValueError(f"kde_points must be >= 2, got {self.kde_points}")

    def pse_loss(self, probes: list[Probe], batch_size: int) -> Tensor:
        """L_PSE of the attn·v products the probes caught in the last forward."""
        return patch_similarity_loss([probe.value for probe in probes], batch_size, self.bandwidth, self.kde_points,
                                     self.entropy_offset)


@torch.no_grad()
def block_entropies(model: nn.Module, images: Tensor) -> list[float]:
    """Mean patch-similarity entropy of ``images`` at every block (a diagnostic: synthetic vs noise vs real).

    The KDE points span this batch's similarities, so compare values of batches of the same size.
    """
    with attn_v_probes(model) as probes:
        model(images)
        return [patch_similarity_entropy(probe.value, images.shape[0]).mean().item() for probe in probes]
