"""Input transforms of the views: PIL image -> normalised tensor, each with a ``describe()`` string.

- ``SquareResize(S, mean, std)``: PIL's antialiased bicubic resize to S x S, then normalise. The official
  part pipeline's ``Resize(224, interpolation=3)`` on a square crop is exactly this resize
  (docs/protocols.md#part-retrieval-crops); also used for whole CIFAR images and the dense protocol's
  full images (aspect not kept).
- ``ResizeCenterCrop(resize, crop, interpolation, mean, std)``: torchvision Resize + CenterCrop, the
  official part-classification train transform (resize 256, crop 224) and every method's own eval
  transform for whole images.

Whole images (CIFAR-10, image folders) take one of the two by name (``image_transform``): ``resize`` or
``eval``; each transform's ``kind`` says which it is.

``normalization(name, encoder)`` gives the statistics: ``imagenet`` (the official code's, for every model)
or ``model`` (the encoder's own).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "model")


def normalization(name: str, encoder) -> tuple[tuple, tuple]:
    """Mean/std: ``imagenet`` (the paper's code, every model) or ``model`` (the encoder's own)."""
    if name == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if name == "model":
        return tuple(encoder.mean), tuple(encoder.std)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {name!r}")


def _normalise(image: Image.Image, mean, std) -> torch.Tensor:
    # ToTensor + Normalize in numpy float32: the same IEEE operations as torchvision's (x / 255 - mean) / std,
    # several times faster than tensor ops on one small image.
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class SquareResize:
    """PIL image -> normalised tensor [3, S, S]: PIL antialiased bicubic resize to S x S, ToTensor, Normalize."""

    kind = "resize"

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size = int(size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return _normalise(image.convert("RGB").resize((self.size, self.size), Image.BICUBIC), self.mean, self.std)

    def describe(self) -> str:
        return (f"PIL bicubic resize to {self.size}x{self.size}; ToTensor; "
                f"Normalize(mean={list(self.mean)}, std={list(self.std)})")


class ResizeCenterCrop:
    """torchvision ``Resize(resize)`` (shorter side) + ``CenterCrop(crop)``, ToTensor, Normalize."""

    kind = "resize-center-crop"

    def __init__(self, resize: int, crop: int, interpolation: str = "bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        from torchvision import transforms as T

        self.resize, self.crop, self.interpolation = int(resize), int(crop), interpolation
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
        self._resize = T.Resize(self.resize, interpolation=mode)
        self._crop = T.CenterCrop(self.crop)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return _normalise(self._crop(self._resize(image.convert("RGB"))), self.mean, self.std)

    def describe(self) -> str:
        return (f"Resize({self.resize}, {self.interpolation}) + CenterCrop({self.crop}); "
                f"Normalize({list(self.mean)}, {list(self.std)})")


IMAGE_TRANSFORMS = ("resize", "eval")


def eval_transform(encoder, normalize: str = "model") -> ResizeCenterCrop:
    """The encoder's own eval transform (its resize, crop and interpolation) with the chosen statistics."""
    mean, std = normalization(normalize, encoder)
    out = ResizeCenterCrop(encoder.resize, encoder.crop_size, encoder.interpolation, mean, std)
    out.kind = "eval"
    return out


def image_transform(kind: str, encoder, normalize: str):
    """Whole images: ``resize`` (the image resized to the encoder's input size, PIL bicubic, aspect not kept)
    or ``eval`` (the encoder's own eval transform: Resize + CenterCrop with its interpolation)."""
    if kind == "resize":
        mean, std = normalization(normalize, encoder)
        return SquareResize(encoder.crop_size, mean, std)
    if kind == "eval":
        return eval_transform(encoder, normalize)
    raise ValueError(f"image transform must be one of {IMAGE_TRANSFORMS}, got {kind!r}")
