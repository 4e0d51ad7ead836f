"""The detectors' objective for calibrators that need one (capability ``objective``; docs/methods.md, APHQ-ViT,
Detection): the region proposal network's outputs, as APHQ-ViT's detection code compares them."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api.quantizer import OutputObjective, binary_kl

Proposals = tuple[list[Tensor], list[Tensor]]  # per FPN level: objectness (B, A, H, W), box deltas (B, 4A, H, W)


class ProposalDivergence(OutputObjective):
    """Per image, summed over images: C / C.detach() + L / L.detach(), with C the binary KL of sigmoid(objectness)
    to the FP detector's, mean over the image's anchors, summed over levels, and L the smooth L1 of the box
    deltas on the anchors whose FP objectness is above ``threshold`` (both zero elsewhere), mean over the
    image's elements, summed over levels. Their code runs one image at a time, so its normalization is per
    image; images do not interact in the forward, so a batch gives each image the same gradient. A term that
    is 0 (no anchor above the threshold) is left out: its gradient is 0, and dividing by it would give NaN.
    δ = 1e-3 and per-image Hessians: their detection code's."""

    perturbation = 1e-3
    per_image = True

    def __init__(self, proposals: Callable[[nn.Module, Tensor], Proposals], threshold: float = 0.7) -> None:
        self._proposals, self.threshold = proposals, threshold

    def outputs(self, part: nn.Module, images: Tensor) -> Proposals:
        return self._proposals(part, images)

    def reference(self, fp_outputs: Proposals) -> Proposals:
        objectness, boxes = fp_outputs
        return [o.detach().sigmoid() for o in objectness], [b.detach() for b in boxes]

    def loss(self, outputs: Proposals, reference: Proposals) -> Tensor:
        classification = sum(binary_kl(o.sigmoid(), r) for o, r in zip(outputs[0], reference[0]))
        regression = sum(self._box_error(b, rb, r) for b, rb, r in zip(outputs[1], reference[1], reference[0]))
        return sum((term / torch.where(term.detach() > 0, term.detach(), 1)).sum()
                   for term in (classification, regression))

    def _box_error(self, boxes: Tensor, reference: Tensor, objectness: Tensor) -> Tensor:
        mask = (objectness > self.threshold).repeat_interleave(4, dim=1)  # deltas are anchor-major: 4 per anchor
        return F.smooth_l1_loss(boxes * mask, reference * mask, reduction="none").flatten(1).mean(dim=1)


def backbone_proposals(detector: nn.Module) -> Callable[[nn.Module, Tensor], Proposals]:
    """The proposals of ``detector``'s FP neck and RPN on a quantized (or FP) backbone's features."""
    return lambda backbone, images: detector.rpn_head(detector.neck(backbone(images)))


class _Proposed(Exception):
    """Stops the detector's forward once the RPN has run: the second stage plays no part in the objective."""


def inner_proposals(part: nn.Module, images: Tensor) -> Proposals:
    """The RPN's outputs inside a whole detector part (``quantize=all``: neck and heads quantized too)."""
    seen: list[Proposals] = []

    def stop(_: nn.Module, __: tuple, outputs: Proposals) -> None:
        seen.append(outputs)
        raise _Proposed

    with _hooked(part.model.rpn_head, stop):
        with contextlib.suppress(_Proposed):
            part(images)
    return seen[0]


@contextlib.contextmanager
def _hooked(module: nn.Module, hook: Callable) -> Iterator[None]:
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

