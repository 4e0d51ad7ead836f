"""No value is read back to the host in a quantized forward or a synthesis iteration.

On an accelerator every such read (``float(t)``, ``t.item()``, ``if t:``, a data-dependent shape)
waits for all queued kernels. On CPU the reads are counted with a dispatch mode instead.
"""
from __future__ import annotations

import collections
import functools

import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.model.fused import ENVIRONMENT_SWITCH
from harness.plugin.calibrators import MinMaxCalibrator
from harness.plugin.method import CalibrationContext, CalibrationSet, GenerationContext
from harness.plugin.task import ImagePrior
from harness.priors import patch_similarity
from harness.quant.bits import parse_bits
from harness.quant.convert import QuantConfig, quantize_model
from harness.quant.fake_quant import fake_quant_asymmetric
from harness.quant.modules import in_place_evaluation
from methods.psaq.generator import PSAQOptions, PatchSimilarityGenerator

# ops that hand a value (or a shape that depends on values) to the host
HOST_READS = {"aten::_local_scalar_dense", "aten::equal", "aten::nonzero", "aten::masked_select",
              "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim"}


class ScalarReads(TorchDispatchMode):
    """Counts host reads by op name, apart from reads of values drawn from an explicit ``torch.Generator``.

    The harness draws its random numbers (jitter offsets, flips) from a seeded CPU generator even
    when the model runs on a GPU: those values, and what is computed from them alone, live on the
    host, and reading them waits for nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.device_reads: collections.Counter[str] = collections.Counter()
        self.host_draw_reads = 0
        self._host_values: list[torch.Tensor] = []

    def _is_host_value(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and any(value is kept for kept in self._host_values)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [*args, *kwargs.values()]
        tensors = [value for value in inputs if isinstance(value, torch.Tensor)]
        drawn = any(isinstance(value, torch.Generator) for value in inputs)
        from_host = drawn or (tensors and all(map(self._is_host_value, tensors)))
        name = func._schema.name
        if name in HOST_READS:
            if from_host:
                self.host_draw_reads += 1
            else:
                self.device_reads[name] += 1
        result = func(*args, **kwargs)
        if from_host:
            self._host_values.extend(value for value in (result if isinstance(result, (tuple, list)) else (result,))
                                     if isinstance(value, torch.Tensor))
        return result


def _calibrated(model: torch.nn.Module, bits: str, config: QuantConfig, images: torch.Tensor) -> torch.nn.Module:
    qmodel = quantize_model(model, parse_bits(bits), config)
    MinMaxCalibrator().calibrate(qmodel, CalibrationContext(
        fp_model=model, calibration=CalibrationSet(images), bits=parse_bits(bits), seed=0, device=torch.device("cpu")))
    return qmodel


@pytest.fixture(scope="module")
def deit_tiny() -> torch.nn.Module:
    """DeiT-T's architecture at 224 px, random init (no weights here)."""
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()


@pytest.fixture(autouse=True, scope="module")
def fused_kernels_checked() -> None:
    """The fused quantizer compiles and is checked against eager torch once per process, reading values
    then; what is counted here is every forward after that."""
    values = torch.randn(1000)
    fake_quant_asymmetric(values, values.abs().max() / 127, torch.tensor(128.0), 8)


CONFIGS = {"standard": QuantConfig(), "standard-log2": QuantConfig(attn_quantizer="log2"),
           "psaq": QuantConfig(profile="psaq")}


@pytest.mark.parametrize("bits", ["w8a8", "w4a8"])
@pytest.mark.parametrize("config", CONFIGS)
def test_a_quantized_deit_forward_reads_nothing_back(deit_tiny, config, bits):
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    qmodel = _calibrated(deit_tiny, bits, CONFIGS[config], images)
    with torch.no_grad(), ScalarReads() as reads:
        first = qmodel(images)  # the first forward after calibration fills the weight caches
        second = qmodel(images)
        with in_place_evaluation():  # as a cell evaluates
            third = qmodel(images)
    assert dict(reads.device_reads) == {} and reads.host_draw_reads == 0
    assert torch.equal(first, second) and torch.equal(first, third) and first.shape == (2, 1000)


def test_twin_uniform_quantizers_read_their_parameters_once(deit_tiny):
    """PTQ4ViT's kinds: the post-GELU quantizer's negative step is a Python float, read from its buffer
    on the first forward and again only when the buffer changes."""
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    qmodel = _calibrated(deit_tiny, "w8a8", QuantConfig(), images)
    post_gelu = [block.mlp.fc2.dfq_points["in"] for block in qmodel.blocks]
    for block, quantizer in zip(qmodel.blocks, post_gelu):
        block.attn.dfq_points["attn"].kind = "twin_uniform"
        block.attn.dfq_points["attn"].set_params(torch.tensor(2.0 ** -5), torch.tensor(0.0))
        quantizer.kind = "twin_signed"
        quantizer.set_params(quantizer.high / 127, torch.tensor(2.0 ** -9))
    with torch.no_grad(), ScalarReads() as reads:
        first = qmodel(images)
    assert dict(reads.device_reads) == {"aten::_local_scalar_dense": len(post_gelu)}
    with torch.no_grad(), ScalarReads() as reads:
        second = qmodel(images)
        post_gelu[0].zero_point.fill_(2.0 ** -8)
        third = qmodel(images)
    assert dict(reads.device_reads) == {"aten::_local_scalar_dense": 1}
    assert torch.equal(first, second) and not torch.equal(first, third)


@pytest.mark.parametrize("config", ["standard", "psaq"])
def test_a_quantized_swin_forward_reads_nothing_back(tiny_swin, config):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    qmodel = _calibrated(tiny_swin, "w4a8", CONFIGS[config], images)
    with torch.no_grad(), ScalarReads() as reads:
        qmodel(images)
    assert dict(reads.device_reads) == {}


PRIOR = ImagePrior(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_classes=10)


def _synthesize(model: torch.nn.Module, iterations: int) -> tuple[torch.Tensor, ScalarReads]:
    generator = PatchSimilarityGenerator(PSAQOptions(num_images=2, batch_size=2, iterations=iterations, warmup=1,
                                                     roll_ranges=(4,)))
    context = GenerationContext(task=None, model_name="tiny", model=model, prior=PRIOR, seed=0,
                                device=torch.device("cpu"))
    with ScalarReads() as reads:
        images = generator.generate(context).images
    return images, reads


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_swin"])
def test_psaq_synthesis_iterations_read_nothing_back_from_the_device(fixture, request, monkeypatch):
    """Reads per run do not grow with the iterations: the progress bar's first losses and the final
    report (3 terms each) are all; each iteration reads its two host draws (roll offset, flip).

    The KDE's form is picked on the device as on an accelerator; the images are those of the host's pick.
    """
    model = request.getfixturevalue(fixture).requires_grad_(False)
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")  # the dispatch mode counts eager torch's ops
    host_picked, _ = _synthesize(model, 2)
    monkeypatch.setattr(patch_similarity, "_width_read_on_host", lambda points: False)
    (few, few_reads), (more, more_reads) = _synthesize(model, 2), _synthesize(model, 6)
    assert few_reads.device_reads == more_reads.device_reads == {"aten::_local_scalar_dense": 6}
    assert more_reads.host_draw_reads - few_reads.host_draw_reads == 2 * 4
    assert torch.equal(few, host_picked) and not torch.equal(few, more)


def _grid(width: float, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 300) samples spread over ``width`` bandwidths, both ends included, and the 10-point grid that spans them."""
    samples = 0.3 + width * 0.01 * torch.rand(3, 300, generator=torch.Generator().manual_seed(4), dtype=dtype)
    samples[0, :2] = torch.tensor([0.3, 0.3 + width * 0.01], dtype=dtype)
    return samples, samples.min() + (samples.max() - samples.min()) * torch.linspace(0, 1, 10, dtype=dtype)


@pytest.mark.parametrize("width", [0.5, 4.0, 9.99, 10.01, 60.0])
def test_the_form_chosen_on_the_device_gives_the_hosts_sums_and_gradients_bit_for_bit(width, monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")
    samples, points = _grid(width)
    weights = torch.randint(1, 3, (300,), generator=torch.Generator().manual_seed(5)).float()
    incoming = torch.randn(3, 10, generator=torch.Generator().manual_seed(6))
    results, forms = [], []
    for on_host in (True, False):
        monkeypatch.setattr(patch_similarity, "_width_read_on_host", lambda points, on_host=on_host: on_host)
        leaf = samples.clone().requires_grad_(True)
        sums = patch_similarity.kernel_sum(leaf, points, 0.01, weights, grid_spans_samples=True)
        (sums * incoming).sum().backward()
        results.append((sums.detach(), leaf.grad))
        forms.append(bool(patch_similarity._grid_is_narrow(points, 0.01)))
    (host, host_grad), (device, device_grad) = results
    assert forms[0] == (patch_similarity._kernel_form(points, 0.01).name == "factorized") == (width < 10)
    assert torch.equal(host, device) and torch.equal(host_grad, device_grad)
    assert torch.isfinite(device).all() and torch.isfinite(device_grad).all()


@pytest.mark.parametrize("width", [4.0, 60.0])
def test_the_fused_form_chosen_on_the_device_matches_eager_torch(width, monkeypatch):
    """Compiled, both forms and the selection fuse into one kernel each way; fusion may reorder sums only."""
    samples, points = _grid(width)
    monkeypatch.setattr(patch_similarity, "_width_read_on_host", lambda points: False)
    results = []
    for switch in ("0", "1"):
        monkeypatch.setenv(ENVIRONMENT_SWITCH, switch)
        leaf = samples.clone().requires_grad_(True)
        kernel_sum = functools.partial(patch_similarity.kernel_sum, points=points, bandwidth=0.01,
                                       grid_spans_samples=True)
        sums = kernel_sum(leaf)
        sums.sum().backward()
        results.append((sums.detach(), leaf.grad))
    if not patch_similarity._KERNELS.enabled:
        pytest.skip(f"fused kernels not used here ({patch_similarity._KERNELS.failure}); the eager fallback ran")
    (eager, eager_grad), (fused, fused_grad) = results
    assert torch.allclose(fused, eager, rtol=1e-5, atol=0)
    assert torch.allclose(fused_grad, eager_grad, atol=1e-5 * eager_grad.abs().max(), rtol=0)
