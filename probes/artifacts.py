"""Files a run writes beside its records, so that analysis (figures, failure cases) never reruns an encoder.

- ``items_csv(db)``: every item of a part database (index, image, part, keypoint, distance, the crop box
  PIL cuts), once per run.
- ``queries_csv(scores, labels, class_names, neighbours)``: one row per query of a retrieval record: its
  label, AP and precision@k (percent, as the record's metrics), and its top-k gallery items with their
  similarities. The mean of the AP column over the queries that have a positive (an empty AP: none) is the
  record's AP.
- ``per_class_csv(rows)``: a per-class table (classification accuracy, segmentation IoU).

All are CSV (pandas reads them: ``pd.read_csv(path)``); list-valued cells are space-separated.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

import numpy as np

TOPK = 10   # neighbours kept per query: enough for a retrieval-grid figure and for browsing failure cases


def _csv(header: Sequence[str], rows) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return out.getvalue().encode("utf-8")


def items_csv(db) -> bytes:
    """One row per part patch: where it is cut from and what it is."""
    from probes.parts import pixel_box

    header = ["index", "image_path", "image_id", "ann_id", "split", "part_id", "part", "label", "x", "y",
              "distance", "box_x0", "box_y0", "box_x1", "box_y1", "pixel_box"]
    rows = []
    for i, item in enumerate(db.items):
        rows.append([i, item.image_path, item.image_id, "" if item.ann_id is None else item.ann_id, item.split,
                     item.part_id, item.part_name, item.label, repr(float(item.keypoint[0])),
                     repr(float(item.keypoint[1])), repr(float(item.distance)),
                     *(repr(float(v)) for v in item.box), " ".join(str(v) for v in pixel_box(item.box))])
    return _csv(header, rows)


def queries_csv(scores: dict, labels: np.ndarray, class_names: Sequence[str], neighbour_sims, neighbour_ids,
                ks: Sequence[int], gallery_labels: np.ndarray | None = None) -> bytes:
    """One row per query: label, AP and P@k in percent (``scores`` holds fractions), top-k neighbours (gallery
    indices), their similarities and labels."""
    gallery_labels = labels if gallery_labels is None else gallery_labels
    header = ["query", "label", "class", "AP", *(f"P@{k}" for k in ks), "topk", "topk_similarity", "topk_relevant"]
    rows = []
    ap = scores["per_query_AP"]
    for q, label in enumerate(labels.tolist()):
        ids = neighbour_ids[q].tolist()
        rows.append([q, label, class_names[label], 100 * float(ap[q]),
                     *(100 * float(scores[f"per_query_P@{k}"][q]) for k in ks),
                     " ".join(map(str, ids)), " ".join(f"{float(s):.6f}" for s in neighbour_sims[q].tolist()),
                     " ".join("1" if int(gallery_labels[j]) == label else "0" for j in ids)])
    return _csv(header, rows)


def per_class_csv(header: Sequence[str], rows) -> bytes:
    return _csv(header, rows)


def read_table(path) -> list[dict]:
    """A CSV artifact as a list of rows (dicts of strings)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
