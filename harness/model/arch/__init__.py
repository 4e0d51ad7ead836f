"""Instrumented forwards for the model families the quantizer wraps.

Each file covers one family and subclasses the library's own attention/block (and model) classes,
overriding forwards only to expose named points (:mod:`harness.model.instrument`) at the matmul inputs,
the pre-softmax scores, the attn·v product, the residual sums and the position embedding.
:func:`instrument` swaps a module's class in place (parameters, buffers and state-dict keys
unchanged); :func:`restore` swaps it back.
An instrumented class may define ``dfq_adopt`` / ``dfq_release`` to add and remove submodules that
share the module's parameters (``nn.MultiheadAttention``'s packed projection as a ``qkv`` Linear).

Adding a model family (docs/plugins.md, Where does my code go):

1. A file here, ``<library>_<family>.py``, with a subclass of the family's attention whose forward
   is the library's, passing tensors through :func:`harness.model.instrument.apply_point` at ``q`` (with
   the 1/sqrt(d) factor), ``k``, ``v``, ``scores`` (pre-softmax), ``attn`` (post-softmax) and
   ``attn_v`` (before heads merge), and ``is_dfq_attention = True`` (``is_dfq_window = True`` for
   window attention). Its block, if a calibrator should reconstruct it, is ``marked_block(Block,
   __name__)`` or a subclass with ``is_dfq_block = True``. ``psaq_points`` names the extra points the
   ``psaq`` profile quantizes; a family without them sets ``psaq_profile = False`` on its attention.
2. ``register_swap(Original, Instrumented)`` for each class, at import for a family whose library is
   always installed (then import the file in :func:`_load_families`), or in a ``register(module)``
   listed in ``_MM_FAMILIES`` for an optional library.
3. The file in ``harness.store.code_version.QUANTIZER_MODULES``, so records know the code that quantized them,
   and a test comparing the instrumented forward with the library's (``tests/harness/test_quantizer.py``).
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass
from typing import Iterator

from torch import nn

_SWAPS: dict[type, type] = {}
SUPPORTED = "timm ViT/DeiT/Swin, mmdet/mmseg Swin and ViT"  # the families below, for error messages


def register_swap(original: type, instrumented: type) -> None:
    _SWAPS[original] = instrumented


def marked_block(original: type, module: str) -> type:
    """``original`` with its own forward, marked as a transformer block (what block-wise calibrators reconstruct)."""
    return type(f"Instrumented{original.__qualname__}", (original,), {"is_dfq_block": True, "__module__": module})


def instrument(model: nn.Module) -> list[nn.Module]:
    """Swap every known attention/block class for its instrumented subclass; returns the swapped modules."""
    _load_families()
    swapped = []
    for module in model.modules():
        instrumented = _SWAPS.get(type(module))
        if instrumented is not None:
            module.__class__ = instrumented
            if hasattr(module, "dfq_adopt"):
                module.dfq_adopt()
            swapped.append(module)
    return swapped


def restore(modules: list[nn.Module]) -> None:
    """Undo :func:`instrument` on these modules (the library's own forwards, e.g. fused attention, come back)."""
    originals = {instrumented: original for original, instrumented in _SWAPS.items()}
    for module in modules:
        original = originals.get(type(module))
        if original is not None:
            if hasattr(module, "dfq_release"):
                module.dfq_release()
            module.__class__ = original


@contextlib.contextmanager
def instrumented(model: nn.Module) -> Iterator[nn.Module]:
    """Instrument ``model`` for the duration of a block, e.g. while a generator probes attention.

    Only the swaps made here are undone: a model that was already instrumented (a quantized
    copy) keeps its instrumentation.
    """
    swapped = instrument(model)
    try:
        yield model
    finally:
        restore(swapped)


def is_instrumented_attention(module: nn.Module) -> bool:
    return getattr(type(module), "is_dfq_attention", False)


def is_instrumented_block(module: nn.Module) -> bool:
    return getattr(type(module), "is_dfq_block", False)


def mlp_and_normed_temporaries(block: nn.Module) -> tuple[str, ...]:
    """The linear inputs a timm block makes for them alone (``temporary_points``, docs/quantizer.md,
    Evaluation cost): the MLP's hidden activation, and the normalized tokens that attention and the
    MLP read where the block normalizes (a norm's output is a new tensor; an identity would pass on
    the residual stream itself)."""
    points = ["mlp.fc2.in"]
    if not isinstance(getattr(block, "norm1", nn.Identity()), nn.Identity):
        points.append("attn.qkv.in")
    if not isinstance(getattr(block, "norm2", nn.Identity()), nn.Identity):
        points.append("mlp.fc1.in")
    return tuple(points)


@dataclass(frozen=True)
class BlockMlp:
    """A transformer block's MLP as one sees it who rewrites it: fc1 → activation → fc2, without the residual
    (timm's ``Mlp``; the ``layers`` of mmcv's ``FFN``, whose forward adds the residual itself)."""

    module: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    _owner: nn.Module  # the module holding the activation, under ``_name``
    _name: str

    @property
    def activation(self) -> nn.Module:
        return getattr(self._owner, self._name)

    def use_activation(self, activation: nn.Module) -> None:
        setattr(self._owner, self._name, activation)


def block_mlp(block: nn.Module) -> BlockMlp | None:
    """The MLP of a timm ViT/DeiT/Swin block or an mmdet/mmseg Swin block; None for other modules."""
    mlp = getattr(block, "mlp", None)
    if mlp is not None and hasattr(mlp, "fc2"):
        return BlockMlp(mlp, mlp.fc1, mlp.fc2, mlp, "act")
    layers = getattr(getattr(block, "ffn", None), "layers", None)
    if layers is not None:  # mmcv FFN: ((fc1, activation, dropout), fc2, dropout)
        return BlockMlp(layers, layers[0][0], layers[1], layers[0], "1")
    return None


def is_window_attention(module: nn.Module) -> bool:
    """A Swin window attention (timm, mmdet or mmseg), instrumented or not."""
    _load_families()
    cls = _SWAPS.get(type(module), type(module))
    return getattr(cls, "is_dfq_window", False)


# OpenMMLab backbones are instrumented only once their library is loaded (a model built from it is);
# importing mmdet/mmseg just to look would cost seconds and the compiled mmcv ops.
_MM_FAMILIES = {"mmdet.models.backbones.swin": "mm_swin", "mmseg.models.backbones.swin": "mm_swin",
                "mmseg.models.backbones.vit": "mm_vit"}


_loaded_mm: set[str] = set()


_TIMM_FAMILIES = ("timm_swin", "timm_vit")  # loaded by name, as the OpenMMLab ones: each registers its swaps


def _load_families() -> None:
    for family in _TIMM_FAMILIES:
        importlib.import_module(f"harness.model.arch.{family}")
    for library_module, family in _MM_FAMILIES.items():
        if library_module in sys.modules and library_module not in _loaded_mm:
            importlib.import_module(f"harness.model.arch.{family}").register(sys.modules[library_module])
            _loaded_mm.add(library_module)
