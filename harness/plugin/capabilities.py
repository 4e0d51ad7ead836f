"""The words a task offers and a plugin needs (docs/plugins.md, Support): plain names, in a module of their
own so the plugin bases (harness.plugin.task, harness.plugin.method) and the support check (harness.plugin.support) all read them
without importing each other."""
from __future__ import annotations

CLASSES = "classes"
REAL_IMAGES = "real images"
ATTENTION = "attention"
BLOCKS = "blocks"
CLASS_TOKEN = "class token"
LOGITS = "logits"
OBJECTIVE = "objective"
CAPABILITIES: dict[str, str] = {  # what each one means, for `list` and refusals
    CLASSES: "class logits of the model images are synthesized through",
    REAL_IMAGES: "real training images",
    ATTENTION: "attention modules whose internals the priors and calibrators probe",
    BLOCKS: "transformer blocks a calibrator reconstructs one by one",
    CLASS_TOKEN: "a class token whose attention row over the patches a prior reads (ViT, DeiT; not Swin)",
    LOGITS: "the quantized model's own class logits, on which a calibrator's loss is defined (a classifier; a "
            "detection/segmentation backbone has none)",
    OBJECTIVE: "a differentiable objective on the quantized part's output, whose gradient a calibrator weighs by "
               "(a classifier's logits; a two-stage detector's region proposals; none for segmentation)",
}
