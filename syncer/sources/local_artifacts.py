"""A run's local artifact folder, listed safely: only regular files, a symlink followed only while
it stays inside the folder, never a FIFO, a device or a socket. One bad entry (a dangling link, a
loop, a link out of the folder, an unreadable sub-folder) is skipped with a warning naming it; the
rest is listed. Reading a listed file is `open_regular`'s job (no FIFO can hang it)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .records import ArtifactFile


def list_local_artifacts(root: Path) -> tuple[list[ArtifactFile], list[str]]:
    """(files, warnings): every regular file under `root` (relative posix paths, sorted), and one
    line per entry that was skipped. A missing `root` is an empty listing."""
    try:
        real_root = os.path.realpath(root, strict=True)
    except OSError:
        return [], []
    files: list[ArtifactFile] = []
    warnings: list[str] = []
    seen_dirs = {_dir_id(real_root)}
    stack: list[tuple[str, str]] = [(str(root), "")]  # (folder as found, its path relative to root)
    while stack:
        folder, rel_folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            warnings.append(f"artifact folder {rel_folder or '.'!r} skipped: {_reason(e)}")
            continue
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
            found = _classify(entry, rel, real_root, warnings)
            if found is None:
                continue
            kind, st = found
            if kind == "dir":
                ident = (st.st_dev, st.st_ino)
                if ident in seen_dirs:  # a link back to a folder already walked
                    warnings.append(f"artifact {rel!r} skipped: a symlink loop (back to a folder listed already)")
                    continue
                seen_dirs.add(ident)
                stack.append((entry.path, rel))
            else:
                files.append(ArtifactFile(rel, st.st_size))
    files.sort(key=lambda f: f.path)
    return files, warnings


def _classify(
    entry: os.DirEntry[str], rel: str, real_root: str, warnings: list[str]
) -> tuple[str, os.stat_result] | None:
    """('file' | 'dir', stat of what the entry leads to), or None (skipped, with a warning)."""
    try:
        if entry.is_symlink():
            try:
                target = os.path.realpath(entry.path, strict=True)
            except OSError as e:
                why = {errno.ELOOP: "a symlink loop", errno.ENOENT: "a dangling symlink"}.get(e.errno or 0, _reason(e))
                warnings.append(f"artifact {rel!r} skipped: {why}")
                return None
            if not _inside(target, real_root):
                warnings.append(f"artifact {rel!r} skipped: a symlink out of the artifact folder")
                return None
            st = os.stat(target)
        else:
            st = entry.stat(follow_symlinks=False)
    except OSError as e:
        warnings.append(f"artifact {rel!r} skipped: {_reason(e)}")
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir", st
    if stat.S_ISREG(st.st_mode):
        return "file", st
    warnings.append(f"artifact {rel!r} skipped: {_special(st.st_mode)}, not a regular file")
    return None


def open_regular(path: str | os.PathLike[str]) -> int:
    """An fd open for reading on `path`, only if it is a regular file (a FIFO is opened without
    blocking, then refused; so are devices and sockets). Raises OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{_special(mode)}, not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The content of a regular file (at most `limit` bytes; more is an error). Never reads a
    FIFO, a device or a socket."""
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read(-1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def _inside(target: str, real_root: str) -> bool:
    return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)


def _dir_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _special(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__
