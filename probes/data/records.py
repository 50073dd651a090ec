"""Whitespace-separated record files (CUB's *.txt, LIP's id lists) with errors that name file, line and field."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

from probes.data.errors import DatasetFormatError


def require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "file not found", expected=what)
    return path


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetFormatError(path, "folder not found", expected=what)
    return path


def integer(text: str) -> int:
    value = int(text)          # ValueError for "1.0", "x": ids are plain integers in every format here
    return value


def number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


_EXPECTED = {integer: "an integer", number: "a finite number", str: "text"}


def read_records(path: str | os.PathLike, fields: Sequence[tuple[str, Callable]],
                 last_is_text: bool = False) -> Iterator[tuple[int, list]]:
    """Yield (line number, converted values) for every non-blank line.

    `fields` names and converts each whitespace-separated column. With `last_is_text` the last column
    takes the rest of the line (CUB part names such as "left eye" contain a space).
    """
    path = Path(path)
    with open(path, "r", encoding="utf-8", newline=None) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if last_is_text:
                parts = line.split(maxsplit=len(fields) - 1)
                if len(parts) == len(fields):
                    parts[-1] = parts[-1].rstrip()
            else:
                parts = line.split()
            if len(parts) != len(fields):
                names = " ".join(f"<{name}>" for name, _ in fields)
                raise DatasetFormatError(path, f"{len(parts)} fields in {line.strip()!r}", line=line_number,
                                         expected=f"{len(fields)} fields: {names}")
            values = []
            for (name, convert), text in zip(fields, parts):
                try:
                    values.append(convert(text))
                except ValueError:
                    raise DatasetFormatError(path, f"{text!r} is not valid", line=line_number, field=name,
                                             expected=_EXPECTED.get(convert, convert.__name__)) from None
            yield line_number, values
