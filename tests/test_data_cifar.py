"""CIFAR-10: the generator writes Python-2 style pickles; our reader and torchvision's agree on them.

References: docs/datasets.md#cifar-10 (keys, shapes, planar layout, label order, the latin1/bytes
behaviour of the real files), the stdlib pickle/pickletools, and torchvision's CIFAR10 reader.
"""
from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest

from probes.data.cifar import CIFAR10, check
from probes.data.errors import DatasetFormatError
from probes.data.synth import synth

SPEC_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return synth("cifar10", tmp_path_factory.mktemp("cifar"), seed=0)


def load(path, encoding):
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding=encoding)


def test_tree_matches_the_release(cifar_root):
    assert sorted(os.listdir(cifar_root / "cifar-10-batches-py")) == sorted(FILES + ["batches.meta"])


@pytest.mark.parametrize("name", FILES)
def test_batches_load_like_the_originals_under_latin1_and_bytes(cifar_root, name):
    path = cifar_root / "cifar-10-batches-py" / name
    text_keys, byte_keys = load(path, "latin1"), load(path, "bytes")
    assert set(text_keys) == {"data", "labels", "batch_label", "filenames"}
    assert set(byte_keys) == {b"data", b"labels", b"batch_label", b"filenames"}
    data = text_keys["data"]
    assert data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    assert np.array_equal(data, byte_keys[b"data"])
    assert text_keys["labels"] == byte_keys[b"labels"] and len(text_keys["labels"]) == len(data)
    assert all(isinstance(label, int) and 0 <= label <= 9 for label in text_keys["labels"])
    assert isinstance(byte_keys[b"filenames"][0], bytes) and isinstance(text_keys["filenames"][0], str)
    expected = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
    assert text_keys["batch_label"] == expected and byte_keys[b"batch_label"] == expected.encode()


def test_meta_and_opcodes_are_python2_style(cifar_root):
    path = cifar_root / "cifar-10-batches-py" / "batches.meta"
    assert load(path, "latin1") == {"label_names": SPEC_CLASSES, "num_cases_per_batch": 20, "num_vis": 3072}
    assert load(path, "bytes")[b"label_names"] == [name.encode() for name in SPEC_CLASSES]
    opcodes = {op.name for op, _, _ in pickletools.genops((cifar_root / "cifar-10-batches-py/data_batch_1").read_bytes())}
    assert "BINUNICODE" not in opcodes and "SHORT_UNICODE" not in opcodes
    assert {"SHORT_BINSTRING", "BINSTRING", "GLOBAL", "REDUCE", "BUILD"} <= opcodes
    first = next(arg for op, arg, _ in pickletools.genops((cifar_root / "cifar-10-batches-py/test_batch").read_bytes())
                 if op.name == "GLOBAL")
    assert first == "numpy.core.multiarray _reconstruct"


def test_reader_matches_raw_planar_rows_and_class_counts(cifar_root):
    train, test = CIFAR10(cifar_root, train=True), CIFAR10(cifar_root / "cifar-10-batches-py", train=False)
    assert train.classes == SPEC_CLASSES and len(train) == 100 and len(test) == 50
    assert train.data.shape == (100, 32, 32, 3) and train.data.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [10] * 10 and np.bincount(test.labels).tolist() == [5] * 10
    raw = load(cifar_root / "cifar-10-batches-py" / "data_batch_2", "latin1")
    row, index = raw["data"][3], 20 + 3                     # batch 2 starts after batch 1's 20 images
    assert train.labels[index] == raw["labels"][3] and train.filenames[index] == raw["filenames"][3]
    assert train.data[index, 0, :, 0].tolist() == row[0:32].tolist()            # R of image row 0
    assert train.data[index, 5, 7, 1] == row[1024 + 5 * 32 + 7]                  # G plane, row 5, column 7
    assert train.data[index, 31, 31, 2] == row[3071]                             # last B value


def test_torchvision_reads_the_same_arrays(cifar_root, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    # torchvision md5-checks every file against the real release; the spec's recipe is to patch it out.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    for train in (True, False):
        theirs = tv_cifar.CIFAR10(str(cifar_root), train=train, download=False)
        ours = CIFAR10(cifar_root, train=train)
        assert np.array_equal(theirs.data, ours.data)
        assert theirs.targets == ours.labels.tolist() and theirs.classes == ours.classes


def test_same_class_images_are_near_but_not_identical(cifar_root):
    train, test = CIFAR10(cifar_root, train=True), CIFAR10(cifar_root, train=False)
    a = train.data.reshape(len(train), -1).astype(float)
    b = test.data.reshape(len(test), -1).astype(float)
    nearest = ((b[:, None] - a[None]) ** 2).sum(-1).argmin(1)
    assert (train.labels[nearest] == test.labels).mean() >= 0.8          # easy
    assert len({image.tobytes() for image in train.data}) == len(train)  # every image differs (noise, phase)


def test_check_counts_classes(cifar_root):
    report = check(cifar_root)
    assert report["ok"] and report["counts"] == {"train": 100, "test": 50}
    assert report["class_histogram"] == {name: 15 for name in SPEC_CLASSES}


def test_generator_is_deterministic(cifar_root, tmp_path):
    again = synth("cifar10", tmp_path, seed=0)
    for name in FILES:
        assert (again / "cifar-10-batches-py" / name).read_bytes() == (cifar_root / "cifar-10-batches-py" / name).read_bytes()


# --- bad input ------------------------------------------------------------------------------------------
def _copy(cifar_root, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in FILES + ["batches.meta"]:
        (folder / name).write_bytes((cifar_root / "cifar-10-batches-py" / name).read_bytes())
    return folder


def _error(root, train=True) -> str:
    with pytest.raises(DatasetFormatError) as caught:
        CIFAR10(root, train=train)
    return str(caught.value)


def test_error_missing_folder(tmp_path):
    assert "cifar-10-batches-py/batches.meta: file not found" in _error(tmp_path)


def test_error_missing_batch(tmp_path, cifar_root):
    (_copy(cifar_root, tmp_path) / "data_batch_3").unlink()
    assert "data_batch_3: file not found" in _error(tmp_path)


def test_error_truncated_pickle(tmp_path, cifar_root):
    path = _copy(cifar_root, tmp_path) / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    message = _error(tmp_path, train=False)
    assert "test_batch: not a readable CIFAR pickle" in message


def test_error_wrong_data_shape(tmp_path, cifar_root):
    path = _copy(cifar_root, tmp_path) / "test_batch"
    with open(path, "wb") as handle:
        pickle.dump({"data": np.zeros((4, 1024), np.uint8), "labels": [0, 1, 2, 3]}, handle)
    message = _error(tmp_path, train=False)
    assert "test_batch, field 'data'" in message and "(4, 1024)" in message and "(N, 3072)" in message


def test_error_label_out_of_range(tmp_path, cifar_root):
    path = _copy(cifar_root, tmp_path) / "test_batch"
    with open(path, "wb") as handle:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 12, 3]}, handle)
    assert "test_batch, field 'labels': labels[2] = 12 (expected 0..9)" in _error(tmp_path, train=False)


def test_pickle_that_would_run_code_is_refused(tmp_path, cifar_root):
    path = _copy(cifar_root, tmp_path) / "test_batch"
    path.write_bytes(b"\x80\x02cos\nsystem\nU\x04trueR.")   # os.system('true') if it were unpickled
    message = _error(tmp_path, train=False)
    assert "os.system is not allowed" in message
