"""Image priors and synthesis pieces shared by the generators that optimize pixels.

``loop``: the one pixel-synthesis loop and its options (docs/methods.md, Pixel synthesis);
``synthesis``: schedule, jitter, clamp and total variation (docs/methods.md, PSAQ-ViT, steps 3-6,
reused by SPDFQ); ``patch_similarity``: the patch-similarity entropy prior of PSAQ-ViT (step 5);
``gallery``: PNG grids of calibration images.
"""
