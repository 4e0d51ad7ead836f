"""Top-k accuracy over an in-memory or streamed labelled set, shared by classification tasks."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from harness.progress import progress_bar


@torch.no_grad()
def topk_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    topk: tuple[int, ...] = (1, 5),
    total: int | None = None,
) -> dict[str, float]:
    """Percent of images whose label is among the top-k logits, for each k."""
    device = next(model.parameters()).device
    model.eval()
    hits = torch.zeros(len(topk), dtype=torch.long)
    count = 0
    for images, labels in progress_bar(batches, desc="evaluate", total=total, leave=False):
        logits = model(images.to(device)).float().cpu()
        ranked = logits.topk(max(topk), dim=1).indices
        correct = ranked == labels.view(-1, 1)
        hits += torch.stack([correct[:, :k].any(1).sum() for k in topk])
        count += len(labels)
    if count == 0:
        raise ValueError("evaluation set is empty")
    return {f"top{k}": 100.0 * h.item() / count for k, h in zip(topk, hits)}


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Fixed-order batches of an in-memory set."""
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]
