"""Atomic output writing: a crash or interruption never leaves a half-written result behind.

Files and directories are written under a temporary name in the same directory, then renamed
into place (a rename within one file system is atomic). Reading JSON inputs lives here too, so
every reader reports a missing or malformed file the same way.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import DataFormatError

if TYPE_CHECKING:
    from PIL import Image

# mkstemp creates files readable by the owner only; outputs should get the usual permissions.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    """`indent=None` writes compact JSON, as the real (large) annotation files are."""
    separators = (",", ":") if indent is None else None
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators, ensure_ascii=False) + "\n")


def atomic_save_png(path: str | Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | Path, *, what: str) -> Any:
    """Parse a JSON input file; `what` names the expected content (e.g. "a Karpathy split file")."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{what} not found: {path}; check the path (or run the stage that creates it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); expected {what}") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos}); "
            f"expected {what}; fix or re-download the file"
        ) from None


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """A table of dict rows (columns: the union of keys, first-seen order), written atomically."""
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
