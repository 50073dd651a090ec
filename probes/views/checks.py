"""The data check before the expensive work: one fast pass over every item a view will read.

    view = checked(view, skip_bad_items=cfg.data.skip_bad_items, what="cub at /data/cub")

Each distinct image is opened and decoded once (JPEG at 1/8 scale through PIL's ``draft``: the whole
entropy-coded stream is read, so a truncated file fails, at a fraction of a full decode), which finds a
missing file, an unreadable one (permission), one that is not an image, and a truncated one. Per item it
checks what the view's protocol relies on: a part's keypoint lies inside its image (0 <= x < width,
0 <= y < height, the rule of ``python -m probes.data check``), an object's box lies inside its image (within
1 px), and every label is an index of the class list.

Every problem is collected, not just the first. Without ``skip_bad_items`` the run stops with a
``BadItemsError`` listing them, before any feature is computed or record written. With it the bad items are
left out (``without``): the view that remains carries them as ``left_out``, its identity (and so the cache
key and the records' ``data_sha256``) changes with the items, and ``left_out_protocol`` /
``left_out_notes`` put how many and which into the records; no published value is attached to such a
record (probes.published). Never a silent skip.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from probes.errors import UserError

LISTED = 50           # problems written out in an error or a note; the count is always complete
BOX_TOLERANCE = 1.0   # px: COCO boxes are float and may touch the image edge


class BadItemsError(UserError, ValueError):
    """Items of a dataset fail the data check; the message lists them and the two ways on."""


@dataclass(frozen=True)
class BadItem:
    index: int          # position in the view
    where: str          # the file (and the annotation) the problem is in
    problem: str


# ------------------------------------------------------------------------------------------------ images
def image_problem(path: str) -> tuple[tuple[int, int] | None, str | None]:
    """((width, height), None) for an image that decodes, else (None, what is wrong with it)."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))   # JPEG only; others decode fully
            image.load()
        return size, None
    except FileNotFoundError:
        return None, "image file not found"
    except PermissionError:
        return None, "image file cannot be read (permission denied)"
    except IsADirectoryError:
        return None, "a folder where an image file was expected"
    except Image.UnidentifiedImageError:
        return None, "not an image file PIL can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"image does not decode ({err})"


def image_sizes(paths) -> dict[str, tuple]:
    """path -> (size, problem) for each distinct path, decoded on a few threads (PIL releases the GIL)."""
    distinct = list(dict.fromkeys(str(p) for p in paths))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(distinct, pool.map(image_problem, distinct)))


# ------------------------------------------------------------------------------------------------ per view
def _label_problem(label, num_classes: int) -> str | None:
    if not 0 <= int(label) < num_classes:
        return f"label {int(label)} is not a class index 0..{num_classes - 1}"
    return None


def _part_items(view) -> list[BadItem]:
    """Per image: it decodes, and each keypoint the protocol selected in it (those the distance filter removed
    included: they set the crop size of their neighbours) lies inside it. An image with a problem takes all
    its items with it, so leaving them out changes no other image's crops."""
    db = view.db
    images = {item.image_path for item in db.items}
    sizes = image_sizes(images)
    problems = {path: problem for path, (_, problem) in sizes.items() if problem}
    for path, part, x, y, source in db.keypoints:
        size = sizes[path][0] if path in sizes else None
        if size is not None and path not in problems and not (0 <= x < size[0] and 0 <= y < size[1]):
            problems[path] = (f"visible {part} keypoint at ({x:g}, {y:g}) lies outside the {size[0]}x{size[1]} image "
                              f"({source}; expected 0 <= x < {size[0]}, 0 <= y < {size[1]})")
    bad = []
    for index, item in enumerate(db.items):
        problem = problems.get(item.image_path) or _label_problem(item.label, len(view.class_names))
        if problem:
            bad.append(BadItem(index, item.image_path, problem))
    return bad


def _object_items(view) -> list[BadItem]:
    bad = []
    sizes = image_sizes(path for path, _, _ in view.items)
    for index, (path, (x, y, w, h), label) in enumerate(view.items):
        size, problem = sizes[path]
        if problem is None and not (x >= -BOX_TOLERANCE and y >= -BOX_TOLERANCE and x + w <= size[0] + BOX_TOLERANCE
                                    and y + h <= size[1] + BOX_TOLERANCE):
            problem = f"box [{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {size[0]}x{size[1]} image"
        problem = problem or _label_problem(label, len(view.class_names))
        if problem:
            bad.append(BadItem(index, path, problem))
    return bad


def _file_items(view) -> list[BadItem]:
    bad = []
    samples = view.folder.samples
    sizes = image_sizes(path for path, _ in samples)
    for index, (path, label) in enumerate(samples):
        problem = sizes[path][1] or _label_problem(label, len(view.class_names))
        if problem:
            bad.append(BadItem(index, path, problem))
    return bad


def _label_items(view) -> list[BadItem]:
    where = f"{getattr(view, 'root', '')} ({view.split})"
    return [BadItem(index, where, problem) for index, label in enumerate(view.labels.tolist())
            if (problem := _label_problem(label, len(view.class_names)))]


def _patch_images(view) -> list[BadItem]:
    sizes = image_sizes(view.paths)
    per_image = len(view) // max(1, len(view.paths))
    return [BadItem(i * per_image + patch, path, sizes[path][1]) for i, path in enumerate(view.paths)
            if sizes[path][1] for patch in range(per_image)]


def _segmentation_items(split) -> list[BadItem]:
    """Each image decodes, and its label map decodes, holds only class values (its reader's rule) and has the
    image's size."""
    from probes.data.errors import DatasetFormatError

    sizes = image_sizes(image for image, _ in split.items)

    def label_problem(index: int) -> str | None:
        image, label = split.items[index]
        if sizes[str(image)][1]:
            return sizes[str(image)][1]
        try:
            shape = split.labels(index).shape
        except DatasetFormatError as err:
            return f"label map {label}: {err.problem}" + (f" (expected {err.expected})" if err.expected else "")
        except (OSError, ValueError, SyntaxError) as err:
            return f"label map {label} does not decode ({err})"
        if shape[::-1] != sizes[str(image)][0]:
            return f"label map {label} is {shape[1]}x{shape[0]}, the image {sizes[str(image)][0][0]}x{sizes[str(image)][0][1]}"
        return None

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(label_problem, range(len(split))))
    return [BadItem(index, str(split.items[index][0]), problem) for index, problem in enumerate(problems) if problem]


def check_view(view) -> list[BadItem]:
    """Every problem of every item of ``view``."""
    from probes.segmentation import SegSplit
    from probes.views.classification import FolderView
    from probes.views.objects import ArrayImageView, ObjectCropView
    from probes.views.parts import PartCropView
    from probes.views.patches import ImagePatchView

    for kind, check in ((PartCropView, _part_items), (ObjectCropView, _object_items), (FolderView, _file_items),
                        (ArrayImageView, _label_items), (ImagePatchView, _patch_images),
                        (SegSplit, _segmentation_items)):
        if isinstance(view, kind):
            return check(view)
    raise TypeError(f"no data check for a {type(view).__name__}")


# ------------------------------------------------------------------------------------------------ leaving out
def without(view, bad: list[BadItem]):
    """A view of the same kind holding only the items not in ``bad``; ``left_out`` lists the others."""
    from probes.views.classification import FolderView
    from probes.views.objects import ArrayImageView, ArrayImages, ObjectCropView, ObjectCrops

    drop = {item.index for item in bad}
    keep = [i for i in range(len(view)) if i not in drop]
    if hasattr(view, "db"):                                   # part crops and the dense keypoint view
        out = type(view)(dataclasses.replace(view.db, items=[view.db.items[i] for i in keep]), view.transform)
    elif isinstance(view, ObjectCropView):
        out = copy.copy(view)
        out.items = [view.items[i] for i in keep]
        out.labels = view.labels[keep]
        out.dataset = ObjectCrops(out.items, view.rule, view.transform)
    elif isinstance(view, FolderView):
        folder = copy.copy(view.folder)
        folder.samples = folder.imgs = [view.folder.samples[i] for i in keep]
        folder.targets = [label for _, label in folder.samples]
        out = FolderView(folder, view.root, view.transform)
    elif isinstance(view, ArrayImageView):
        out = copy.copy(view)
        out.labels = view.labels[keep]
        out.dataset = ArrayImages(view.dataset.images[keep], out.labels, view.transform)
    else:
        raise TypeError(f"items of a {type(view).__name__} cannot be left out")
    out.left_out = list(getattr(view, "left_out", [])) + list(bad)
    return out


def describe_problems(bad: list[BadItem], limit: int = LISTED) -> list[str]:
    """One line per (file, problem), with the number of items it touches; at most ``limit`` lines."""
    grouped: dict[tuple[str, str], int] = {}
    for item in bad:
        grouped[item.where, item.problem] = grouped.get((item.where, item.problem), 0) + 1
    lines = [f"{where}: {problem}" + (f" ({count} items)" if count > 1 else "")
             for (where, problem), count in grouped.items()]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def checked(views: dict, skip_bad_items: bool | None, what: str, hint: str = "") -> dict:
    """``{name: view}`` after the data check: unchanged when every item passes; otherwise a BadItemsError
    listing every problem of every view, or (``skip_bad_items``) the views without their bad items
    (``None``: the command has no such option). A view given under two names (queries that are the gallery)
    is checked once."""
    found, out = {}, {}
    for name, view in views.items():
        if id(view) not in found:
            found[id(view)] = check_view(view)
    bad = {name: found[id(view)] for name, view in views.items()}
    unique = {id(view): (name, view) for name, view in views.items()}
    total = sum(len(found[key]) for key in unique)
    if not total:
        return dict(views)
    items = sum(len(view) for _, view in unique.values())
    problems = [item for key in unique for item in found[key]]
    if not skip_bad_items:
        lines = "\n  ".join(describe_problems(problems))
        way = "" if skip_bad_items is None else (", or pass --skip-bad-items to leave these items out (the records "
                                                 "then say how many and which)")
        raise BadItemsError(f"{what}: {total} of {items} items fail the data check (nothing was computed):\n  {lines}\n"
                            f"Fix the data{hint}{way}")
    made = {}
    for name, view in views.items():
        if id(view) not in made:
            made[id(view)] = without(view, bad[name]) if bad[name] else view
            if not len(made[id(view)]):
                raise BadItemsError(f"{what} ({name}): every item fails the data check; nothing is left to run on")
        out[name] = made[id(view)]
    print(f"{what}: left out {total} of {items} items that fail the data check (--skip-bad-items):\n  "
          + "\n  ".join(describe_problems(problems, limit=10)))
    return out


def _distinct(views):
    return list({id(view): view for view in views}.values())


def left_out_protocol(*views) -> dict:
    """``{"bad_items_skipped": N}`` for records of views that had items left out, else {}."""
    total = sum(len(getattr(view, "left_out", [])) for view in _distinct(views))
    return {"bad_items_skipped": total} if total else {}


def left_out_notes(*views) -> dict:
    """Which items were left out, for the records' ``protocol_notes``."""
    bad = [item for view in _distinct(views) for item in getattr(view, "left_out", [])]
    if not bad:
        return {}
    return {"bad_items_skipped": f"{len(bad)} items left out by --skip-bad-items: "
                                 + "; ".join(describe_problems(bad))}
