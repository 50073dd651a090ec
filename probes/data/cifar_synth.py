"""A small CIFAR-10 written as Python-2 pickles, like the real cifar-10-batches-py.

Python 3's pickle writes str as unicode, so a fake made with pickle.dump has str keys even under
encoding='bytes' and breaks code that indexes d[b'data'] (docs/datasets.md#cifar-10-loading-notes).
`py2_pickle` emits the opcodes a Python 2 cPickle.dump(obj, f, 2) produces for these types: str as
BINSTRING and numpy arrays through numpy.core.multiarray._reconstruct with dtype('u1', 0, 1) and state
(3, '|', None, None, None, -1, -1, 0). Loaded with encoding='latin1' it gives str keys, with
encoding='bytes' bytes keys, and the same arrays either way. (Memo opcodes, which cPickle also writes,
are left out: they only save space.)

Images: class c is stripes of CLASS_COLOURS[c] at angle STRIPE_ANGLES[c] and period STRIPE_PERIODS[c],
at a random phase and brightness, plus per-pixel noise: same-class retrieval is easy but not trivial.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from probes.data import cifar
from probes.data.generated import generator
from probes.fileio import write_bytes_atomic

CLASS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                 (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0))
STRIPE_ANGLES = tuple(45.0 * (c % 4) for c in range(10))          # degrees
STRIPE_PERIODS = tuple(4 + 2 * (c % 3) for c in range(10))        # pixels
NOISE = 48                                                        # +- per channel


@generator
def synth_cifar10(out_dir: str | os.PathLike, seed: int = 0, train_per_class: int = 10,
                  test_per_class: int = 5) -> Path:
    """Write out_dir/cifar-10-batches-py/ (5 train batches, test_batch, batches.meta); returns out_dir."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    folder = out_dir / cifar.FOLDER
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    batch_size = -(-len(train_labels) // len(cifar.TRAIN_BATCHES))
    serial = 0
    for batch_index, batch_name in enumerate(cifar.TRAIN_BATCHES + cifar.TEST_BATCHES):
        if batch_name in cifar.TEST_BATCHES:
            labels, description = test_labels, "testing batch 1 of 1"
        else:
            labels = train_labels[batch_index * batch_size:(batch_index + 1) * batch_size]
            description = f"training batch {batch_index + 1} of {len(cifar.TRAIN_BATCHES)}"
        images = np.stack([class_image(rng, int(label)) for label in labels]) if len(labels) else \
            np.zeros((0, 32, 32, 3), np.uint8)
        filenames = []
        for label in labels:
            serial += 1
            filenames.append(f"synthetic_{cifar.CLASSES[label]}_s_{serial:06d}.png")
        batch = {"batch_label": description,
                 "labels": [int(label) for label in labels],
                 "data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),   # channel-planar rows
                 "filenames": filenames}
        write_bytes_atomic(folder / batch_name, py2_pickle(batch))
    meta = {"num_cases_per_batch": batch_size, "label_names": list(cifar.CLASSES), "num_vis": 3072}
    write_bytes_atomic(folder / cifar.META, py2_pickle(meta))
    return out_dir


def class_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """uint8 [32, 32, 3]: the class's coloured stripes, random phase and brightness, plus noise."""
    yy, xx = np.mgrid[0:32, 0:32]
    theta = np.deg2rad(STRIPE_ANGLES[label])
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) / STRIPE_PERIODS[label] + rng.random()
    stripes = np.where(np.floor(phase) % 2 == 1, 0.45, 1.0)[..., None]
    brightness = rng.uniform(0.7, 1.0)
    image = np.asarray(CLASS_COLOURS[label], dtype=float) * stripes * brightness
    image = image + rng.integers(-NOISE, NOISE + 1, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# --- a Python-2 style protocol-2 pickler for dict/list/tuple/str/int/None/bool/uint8 ndarray ----------------
def py2_pickle(obj) -> bytes:
    out = bytearray(b"\x80\x02")          # PROTO 2
    _emit(out, obj)
    out += b"."                           # STOP
    return bytes(out)


def _emit(out: bytearray, obj) -> None:
    if obj is None:
        out += b"N"
    elif obj is True or obj is False:
        out += b"\x88" if obj else b"\x89"                      # NEWTRUE / NEWFALSE
    elif isinstance(obj, (int, np.integer)):
        _emit_int(out, int(obj))
    elif isinstance(obj, str):
        _emit_py2_str(out, obj.encode("latin1"))
    elif isinstance(obj, bytes):
        _emit_py2_str(out, obj)
    elif isinstance(obj, tuple):
        if len(obj) <= 3:
            for item in obj:
                _emit(out, item)
            out += (b")", b"\x85", b"\x86", b"\x87")[len(obj)]  # EMPTY_TUPLE / TUPLE1..3
        else:
            out += b"("                                          # MARK
            for item in obj:
                _emit(out, item)
            out += b"t"                                          # TUPLE
    elif isinstance(obj, list):
        out += b"]"                                              # EMPTY_LIST
        if obj:
            out += b"("
            for item in obj:
                _emit(out, item)
            out += b"e"                                          # APPENDS
    elif isinstance(obj, dict):
        out += b"}"                                              # EMPTY_DICT
        if obj:
            out += b"("
            for key, value in obj.items():
                _emit(out, key)
                _emit(out, value)
            out += b"u"                                          # SETITEMS
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        _emit_uint8_array(out, obj)
    else:
        raise TypeError(f"py2_pickle does not handle {type(obj).__name__}")


def _emit_int(out: bytearray, value: int) -> None:
    if 0 <= value < 256:
        out += b"K" + struct.pack("<B", value)                   # BININT1
    elif 0 <= value < 65536:
        out += b"M" + struct.pack("<H", value)                   # BININT2
    elif -2**31 <= value < 2**31:
        out += b"J" + struct.pack("<i", value)                   # BININT
    else:
        raise ValueError(f"integer {value} does not fit a py2 BININT")


def _emit_py2_str(out: bytearray, data: bytes) -> None:
    if len(data) < 256:
        out += b"U" + struct.pack("<B", len(data)) + data        # SHORT_BINSTRING
    else:
        out += b"T" + struct.pack("<i", len(data)) + data        # BINSTRING


def _emit_uint8_array(out: bytearray, array: np.ndarray) -> None:
    # numpy 1.x ndarray.__reduce__: _reconstruct(ndarray, (0,), 'b') then __setstate__(state)
    out += b"cnumpy.core.multiarray\n_reconstruct\n"             # GLOBAL
    out += b"cnumpy\nndarray\n"
    _emit(out, (0,))
    _emit_py2_str(out, b"b")
    out += b"\x87R"                                              # TUPLE3, REDUCE
    out += b"("                                                  # state: (1, shape, dtype, fortran, data)
    _emit(out, 1)
    _emit(out, tuple(int(n) for n in array.shape))
    out += b"cnumpy\ndtype\n"
    _emit(out, ("u1", 0, 1))
    out += b"R"
    _emit(out, (3, "|", None, None, None, -1, -1, 0))
    out += b"b"                                                  # BUILD (dtype state)
    _emit(out, False)
    _emit_py2_str(out, np.ascontiguousarray(array).tobytes())
    out += b"tb"                                                 # TUPLE, BUILD (array state)
