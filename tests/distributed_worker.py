"""Extraction of a fixed view by a small random ViT through ``probes.features.extract``, as one rank of a
torchrun launch or as a single process; saves what this rank got (``rank<R>.pt``: the features and its
encoder's forward calls). Used by tests/test_distributed.py:

    python tests/distributed_worker.py OUT                                  # one process
    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT
    PARTPROBE_TEST_KILL_RANK1_AFTER=3 torchrun ...                          # rank 1 dies before its 4th batch
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from probes.encoders import Encoder  # noqa: E402
from probes.features import extract  # noqa: E402
from probes.options import RunOptions  # noqa: E402
from probes.zoo.registry import IMAGENET, Arch, Transform  # noqa: E402

ITEMS, BATCH, SHARD = 45, 4, 16


class Images(torch.utils.data.Dataset):
    def __init__(self):
        self.images = torch.randn(ITEMS, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return ITEMS

    def __getitem__(self, i):
        return self.images[i], 0


class View:
    dataset, labels, split = Images(), np.zeros(ITEMS, dtype=int), "all"

    def __len__(self):
        return ITEMS

    def identity(self):
        return {"view": "distributed test images"}


class Counted(Encoder):
    calls = 0

    def extract(self, images, features, block=None):
        limit = int(os.environ.get("PARTPROBE_TEST_KILL_RANK1_AFTER", "0"))
        if limit and os.environ.get("RANK") == "1" and self.calls >= limit:
            os._exit(3)                                      # a killed rank: no cleanup, no exception
        self.calls += 1
        return super().extract(images, features, block)


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              embed_dim=48, depth=2, num_heads=3)
    encoder = Counted(model, name="tiny-vit-random", method="random-init", arch=Arch("vit_tiny_patch8_32"),
                      format="timm", source="timm random initialisation, seed 0", checkpoint_sha256="0" * 64,
                      transform=Transform(IMAGENET.mean, IMAGENET.std, "bicubic", 32, 32))
    features = extract(encoder, View(), ["cls", "patch_mean"], run=RunOptions(batch_size=BATCH, quiet=True),
                       shard_size=SHARD)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"features": features, "calls": encoder.calls}, out / f"rank{os.environ.get('RANK', '0')}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
