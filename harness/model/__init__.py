"""Models as the quantizer sees them: instrumented timm / mmdet / mmseg families (``arch``), named points
inside a model (``instrument``) and fused elementwise kernels (``fused``)."""
