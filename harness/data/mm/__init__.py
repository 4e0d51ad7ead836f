"""Glue to the OpenMMLab stack (mmengine, mmdet, mmseg) shared by the detection and segmentation tasks.

Nothing here imports mmdet or mmseg at module load: the stack is the optional `detseg` extra and
is imported when a task first needs it (:func:`harness.data.mm.stack.require`).
"""
