"""Atomic output: everything deepshrink writes goes to a temporary file in the target's
folder and is renamed into place only when complete, so a failure leaves nothing
half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError


def check_output(out: str | os.PathLike[str], *, inputs: tuple[str | os.PathLike[str] | None, ...] = (),
                 force: bool = False) -> Path:
    """Refuse to overwrite an existing file without ``force``, an output that is a directory
    (``force`` or not: a file is never renamed over a folder) and output == input."""
    out_p = Path(out)
    for src in inputs:
        if src is not None and out_p.resolve() == Path(src).resolve():
            raise InputError(f"output {out_p} is the same file as the input; choose another path")
    _refuse_directory(out_p)
    if out_p.exists() and not force:
        raise InputError(f"output {out_p} already exists; pass --force to overwrite it")
    side = out_p.with_name(out_p.name + ".data")  # where save_onnx puts a large model's tensors
    if out_p.suffix.lower() == ".onnx" and side.is_dir():
        raise InputError(f"{side} is a directory; a large model's tensors would be written there")
    if out_p.suffix.lower() == ".onnx" and (side.exists() or side.is_symlink()) and not force:
        raise InputError(f"{side} already exists (an earlier model's external data?); pass --force "
                         "to overwrite it")
    if not out_p.parent.exists():
        raise InputError(f"output folder {out_p.parent} does not exist")
    check_writable(out_p.parent)
    return out_p


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Refuse a folder deepshrink cannot create files in (not a folder, no permission, read-only
    file system), by creating and removing a probe file there: permission bits alone do not say
    (root ignores them; a read-only mount or /proc does not)."""
    folder_p = Path(folder)
    if not folder_p.is_dir():
        raise InputError(f"output folder {folder_p} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".deepshrink-probe.", dir=folder_p)
    except OSError as exc:
        raise InputError(f"output folder {folder_p} is not writable: a file cannot be created there "
                         f"({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def _refuse_directory(out: Path) -> None:
    if out.is_dir():
        raise InputError(f"output {out} is a directory; give the path of a file to write")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    A ``target`` that is a directory is refused before anything is written."""
    target_p = Path(target)
    _refuse_directory(target_p)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target_p.name}.", suffix=".tmp", dir=target_p.parent)
    except OSError as exc:
        raise InputError(f"cannot write {target_p}: {exc.strerror or type(exc).__name__}") from None
    os.close(fd)
    tmp_p = Path(tmp)
    try:
        yield tmp_p
        if tmp_p.exists():  # mkstemp makes 0600 files; give the result the usual umask-based mode
            os.chmod(tmp_p, 0o666 & ~_umask())
        os.replace(tmp_p, target_p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_p.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; its files are moved into ``target`` (created) on success.

    Used for outputs made of several files (an ONNX model with external data, a model plus
    its tokenizer): either all of them land or none does.
    """
    target_p = Path(target)
    try:
        target_p.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".deepshrink.", dir=target_p))
    except OSError as exc:
        raise InputError(f"cannot write into {target_p}: {exc.strerror or type(exc).__name__}") from None
    try:
        yield tmp
        for item in tmp.iterdir():
            dest = target_p / item.name
            if dest.is_dir() and item.is_dir():
                shutil.rmtree(dest)
            os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))
