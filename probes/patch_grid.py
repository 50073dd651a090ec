"""Patch-retrieval grid over a folder of images, as the paper's Figures 2 and 4 (docs/protocols.md#retrieval-grid-figures).

    python probes/patch_grid.py --model dino --images /data/imagenet/val_subset --query ILSVRC2012_val_00000001.JPEG:3,3 \
        --out grid.png

Each image: Resize 256 -> CenterCrop 224 -> resized to 896 (4x), cut into 7 x 7 = 49 overlapping 224 x 224
patches (stride 112), every patch encoded on its own (features cached like any other view); each query patch
(FILE:ROW,COL, 0-based) is compared by cosine with every patch of every image, and its top-k patches
(other than itself) are drawn beside it. Writes the figure (PNG, PDF, SVG); no result record.
"""
if __name__ == "__main__" and not __package__:  # run as a file from a checkout
    import pathlib, sys
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from probes import experiment
from probes.experiment import Experiment
from probes.features import extract
from probes.grid import PER_SIDE
from probes.metrics import topk_neighbours
from probes.options import ConfigError, Preset, option, section
from probes.views.checks import checked
from probes.views.patches import ImagePatchView
from probes.views.transforms import SquareResize, normalization

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class PatchGridOptions:
    images: Path | None = option(None, help="Folder of images; every image is cut into 49 overlapping patches.")
    query: list[str] | None = option(None, repeat=True, help="Query patch as FILE:ROW,COL (0-based in the 7x7 "
                                                             "grid), repeatable.")
    out: Path = option(Path("patch_grid.png"), help="PNG to write (PDF and SVG beside it).")
    k: int = option(24, help="Retrieved patches per query (the paper shows 24).")
    feature: Literal["patch_mean", "cls", "projection"] = option("patch_mean", help="Feature to compare.")
    normalize: Literal["imagenet", "model"] | None = option(None, help="Input statistics. Default: the preset's.")

    def queries(self) -> list[tuple[str, int, int]]:
        out = []
        for text in self.query or []:
            name, _, cell = text.rpartition(":")
            try:
                row, col = (int(v) for v in cell.split(","))
            except ValueError:
                raise ConfigError(f"--query {text!r}: expected FILE:ROW,COL, e.g. img.jpg:3,3") from None
            if not (0 <= row < PER_SIDE and 0 <= col < PER_SIDE):
                raise ConfigError(f"--query {text!r}: ROW and COL are 0..{PER_SIDE - 1} (the {PER_SIDE} x {PER_SIDE} grid)")
            out.append((str(Path(self.images) / name), row, col))
        return out


@dataclass
class PatchGridConfig(Experiment):
    NAME = "patch_grid"
    PRESETS = {"partaware": Preset({"grid.normalize": "imagenet", "model.precision": "fp32",
                                    "model.mae_token_shuffle": True}, about="the official figure script")}
    grid: PatchGridOptions = section(PatchGridOptions)

    def validate(self) -> None:
        if self.grid.images is None or not Path(self.grid.images).is_dir():
            raise ConfigError(f"--images {self.grid.images}: expected a folder of .jpg/.jpeg/.png images")
        if not self.grid.query:
            raise ConfigError("--query: give at least one query patch as FILE:ROW,COL")
        if self.grid.k < 1:
            raise ConfigError(f"--k {self.grid.k}: expected at least 1 retrieved patch per query")
        for path, _, _ in self.grid.queries():
            if not Path(path).is_file():
                raise ConfigError(f"--query {path}: no such image in {self.grid.images}")


def run(cfg: PatchGridConfig) -> list:
    cfg = experiment.prepare(cfg)
    paths = sorted(p for p in Path(cfg.grid.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"--images {cfg.grid.images}: no .jpg/.jpeg/.png images")
    encoder = experiment.load_encoder(cfg)
    mean, std = normalization(cfg.grid.normalize, encoder)
    view = ImagePatchView(paths, SquareResize(encoder.crop_size, mean, std))
    checked({"images": view}, skip_bad_items=None, what=f"--images {cfg.grid.images}")
    vectors = extract(encoder, view, [cfg.grid.feature], None, cfg.run, description="image patches")[cfg.grid.feature]
    rows = []
    for path, row, col in cfg.grid.queries():
        if str(path) not in view.paths:
            raise ConfigError(f"--query {path}: not one of the images in {cfg.grid.images}")
        q = view.index(path, row, col)
        sims, ids = topk_neighbours(vectors[q:q + 1], vectors, cfg.grid.k + 1)
        hits = [(view.crop(int(j)), None, float(s)) for s, j in zip(sims[0], ids[0]) if int(j) != q][:cfg.grid.k]
        rows.append((view.crop(q), hits, f"{Path(path).name} ({row},{col})"))
    from probes.grid import draw_grid

    out = draw_grid(rows, cfg.grid.out, title=f"{experiment.model_label(cfg, encoder)} / {cfg.grid.feature}",
                    formats=("png", "pdf", "svg"))
    print(f"patch grid written to {out}")
    return []


main = experiment.entry_point(PatchGridConfig, run, __doc__)

if __name__ == "__main__":
    main()
