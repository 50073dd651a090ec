"""Small datasets in the exact official layouts, for tests and demos: `synth(name, out_dir, seed)`.

To add a generator, add one line to GENERATORS: "name": "module:function". The function takes
(out_dir, seed=0, **sizes), writes the official layout under out_dir and returns the root its reader
takes. Modules are imported only when their generator is asked for.
"""
from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

GENERATORS: dict[str, str] = {
    "cub": "probes.data.cub_synth:synth_cub",
    "coco": "probes.data.coco_synth:synth_coco",
    "coco-instances": "probes.data.coco_synth:synth_coco_instances",
    "cifar10": "probes.data.cifar_synth:synth_cifar10",
    "lip": "probes.data.lip_synth:synth_lip",
    "ade20k-part-209": "probes.data.mmseg_synth:synth_ade20k_part_209",
    "ade20k-object-59": "probes.data.mmseg_synth:synth_ade20k_object_59",
    "pascal-part-193": "probes.data.mmseg_synth:synth_pascal_part_193",
    "pascal-object-16": "probes.data.mmseg_synth:synth_pascal_object_16",
    "lip-19": "probes.data.mmseg_synth:synth_lip_19",
    "ade20k": "probes.data.ade20k_synth:synth_ade20k",
    "ade20k-full": "probes.data.ade20k_synth:synth_ade20k_full",
    "ade20k-part-234": "probes.data.ade20k_synth:synth_ade20k_part234",
    "pascal-part": "probes.data.pascal_part_synth:synth_pascal_part",
    "pascal-part-58": "probes.data.pascal_part_synth:synth_pascal_part_gmnet",
    "pascal-part-108": "probes.data.pascal_part_synth:synth_pascal_part_gmnet",
    "pascal-part-116": "probes.data.pascal_part_synth:synth_pascal_part_116",
}


def resolve_name(name: str, known) -> str:
    """Names are written with hyphens (``ade20k-part-234``); ``ade20k_part234`` and the like match too."""
    def key(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")
    matches = [k for k in known if key(k) == key(name)]
    return matches[0] if len(matches) == 1 else name


def generator(name: str):
    try:
        target = GENERATORS[resolve_name(name, GENERATORS)]
    except KeyError:
        raise KeyError(f"no generator named {name!r}; known: {', '.join(sorted(GENERATORS))}") from None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def size_options(make) -> dict[str, object]:
    """The size options of a generator function and their defaults (every parameter but out_dir and seed)."""
    return {p.name: p.default for p in inspect.signature(make).parameters.values()
            if p.name not in ("out_dir", "seed") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def synth(name: str, out_dir: str | os.PathLike, seed: int = 0, **sizes) -> Path:
    """Write a small `name` dataset under out_dir (deterministic for a seed); returns the reader's root.
    The root holds the generated-data marker (probes.data.generated)."""
    from probes.options import ConfigError

    make = generator(name)
    known = {k: v for k, v in size_options(make).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    listed = ", ".join(f"{k} (default {v})" for k, v in known.items()) or "none"
    for key, value in sizes.items():
        if key not in known:
            raise ConfigError(f"--size {key}={value}: the {name} generator has no size {key!r}; its sizes: {listed}")
        if value < 0:
            raise ConfigError(f"--size {key}={value}: expected a number >= 0")
    try:
        return Path(make(out_dir, seed=seed, **sizes))
    except ValueError as err:           # the generators' own checks of their sizes
        raise ConfigError(f"--size {' '.join(f'{k}={v}' for k, v in sizes.items())}: {err}") from None
