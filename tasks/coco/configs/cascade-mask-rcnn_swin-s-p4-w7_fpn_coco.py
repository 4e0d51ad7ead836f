# Cascade Mask R-CNN with the Swin-S backbone: the Swin-T config with Swin-S's depths (as mmdet's Swin-S Mask R-CNN).
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2]))
