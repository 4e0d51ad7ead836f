"""What a task plugin builds on: ImageNet-layout folders (``image_folder``), the mmdet / mmseg glue (``mm``),
top-k evaluation, and checkpoint loading (``weights``, ``timm_weights``)."""
