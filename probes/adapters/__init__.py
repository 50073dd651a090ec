"""Bridges to outside frameworks, each imported only when its probe runs, so the core never needs one.

- ``mmseg``: the suite's encoder as an mmsegmentation backbone, its dataset classes and the training run.
- ``pyramid``, ``d2_weights``, ``d2_config``: plain torch and plain data (ViTDet's simple feature pyramid,
  ResNet weight names, Mask R-CNN recipes); no detectron2 needed.
- ``detectron2``: the detectron2 backbones and the training run; imports detectron2 (check
  ``d2_config.detectron2_missing()`` first).
"""
