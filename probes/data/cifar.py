"""CIFAR-10, python version (docs/datasets.md#cifar-10), read with our own loader.

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta

Each batch is a Python-2 pickle of {'data': uint8 [N, 3072] channel-planar (1024 R, 1024 G, 1024 B,
row-major), 'labels': [N ints], 'batch_label': str, 'filenames': [N str]}. The real files load with
str keys under encoding='latin1' and with bytes keys under encoding='bytes'; fakes written by Python 3
have str keys either way, so keys of both kinds are accepted. torchvision's reader is not used because
it md5-checks every file against the real release.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from probes.data.errors import DatasetFormatError
from probes.data.records import require_file
from probes.data.report import add_problem, new_report

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a downloaded pickle cannot run code.

    numpy.core.* (what Python 2 / numpy 1 pickles name) is served from numpy._core.* on numpy 2.
    """
    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def load_batch(path: str | os.PathLike) -> dict:
    """One batch file as a dict with str keys (bytes keys and values of the real files decoded)."""
    path = require_file(path, f"a CIFAR-10 batch file of {FOLDER}/")
    try:
        with open(path, "rb") as handle:
            content = _ArraysOnly(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise DatasetFormatError(path, f"not a readable CIFAR pickle ({error})",
                                 expected="a Python pickle of a dict, as in cifar-10-python.tar.gz") from None
    if not isinstance(content, dict):
        raise DatasetFormatError(path, f"pickle holds a {type(content).__name__}", expected="a dict")
    return {_text(key): value for key, value in content.items()}


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def locate(root: str | os.PathLike) -> Path:
    root = Path(root)
    for candidate in (root, root / FOLDER):
        if (candidate / META).is_file():
            return candidate
    raise DatasetFormatError(root / FOLDER / META, "file not found",
                             expected=f"{root} to be the {FOLDER} folder or to contain it")


class CIFAR10:
    """`data` uint8 [N, 32, 32, 3] (HWC, RGB), `labels` int64 [N], `classes` (10 names), `filenames`."""

    def __init__(self, root: str | os.PathLike, train: bool = True):
        self.root = locate(root)
        self.train = train
        meta_path = self.root / META
        meta = load_batch(meta_path)
        names = meta.get("label_names")
        if not isinstance(names, list) or not names:
            raise DatasetFormatError(meta_path, f"label_names = {names!r}", field="label_names",
                                     expected="a list of class names")
        self.classes = [_text(name) for name in names]
        data, labels, filenames = [], [], []
        for batch_name in TRAIN_BATCHES if train else TEST_BATCHES:
            path = self.root / batch_name
            batch = load_batch(path)
            array = batch.get("data")
            if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3072:
                shape = getattr(array, "shape", None)
                raise DatasetFormatError(path, f"data is {type(array).__name__} {getattr(array, 'dtype', '')} {shape}",
                                         field="data", expected="uint8 array of shape (N, 3072)")
            batch_labels = batch.get("labels", batch.get("fine_labels"))
            if not isinstance(batch_labels, (list, np.ndarray)) or len(batch_labels) != len(array):
                raise DatasetFormatError(path, f"{len(batch_labels) if batch_labels is not None else 'no'} labels "
                                               f"for {len(array)} images", field="labels", expected="one label per row of data")
            batch_labels = np.asarray(batch_labels, dtype=np.int64)
            bad = np.flatnonzero((batch_labels < 0) | (batch_labels >= len(self.classes)))
            if len(bad):
                raise DatasetFormatError(path, f"labels[{bad[0]}] = {batch_labels[bad[0]]}", field="labels",
                                         expected=f"0..{len(self.classes) - 1}")
            data.append(array)
            labels.append(batch_labels)
            filenames.extend(_text(name) for name in batch.get("filenames", [""] * len(array)))
        # channel-planar rows -> [N, 3, 32, 32] -> HWC
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.labels = np.concatenate(labels)
        self.filenames = filenames

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int):
        from PIL import Image
        return Image.fromarray(self.data[index])


# --- CLI hooks ---------------------------------------------------------------------------------------------
def download(root: str | os.PathLike, name: str = "cifar10") -> Path:
    from probes.data.download import download_file
    return download_file(URL, Path(root) / ARCHIVE, md5=MD5)


def prepare(root: str | os.PathLike, name: str = "cifar10", source=None) -> Path:
    from probes.data.download import extract_archive
    root = Path(root)
    if not (root / FOLDER / META).is_file():
        extract_archive(Path(source) if source else root / ARCHIVE, root)
    return root


def check(root: str | os.PathLike, name: str = "cifar10") -> dict:
    report = new_report(name, root)
    histogram = np.zeros(len(CLASSES), dtype=int)
    for train in (True, False):
        try:
            split = CIFAR10(root, train=train)
        except DatasetFormatError as error:
            add_problem(report, error)
            continue
        report["counts"]["train" if train else "test"] = len(split)
        histogram += np.bincount(split.labels, minlength=len(CLASSES))[:len(CLASSES)]
        if tuple(split.classes) != CLASSES:
            add_problem(report, f"{split.root / META}: label_names {split.classes} differ from {list(CLASSES)}")
    report["class_histogram"] = dict(zip(CLASSES, histogram.tolist()))
    return report
