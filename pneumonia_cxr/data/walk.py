"""The one file listing of every predict mode (plain, `--output` archive, `--devices`).

What a folder yields, the same whichever mode walks it:
- entries in name order, folder by folder, streamed (an archive is never held in memory);
- names starting with "." are skipped, files and folders alike (`.git`, `.Trash`, macOS
  `.DS_Store` and `._x.jpeg` AppleDouble files, which carry an image extension without being
  images); a path given on the command line is always used as given;
- only image extensions (`loader.is_image_file`), upper case included;
- symbolic links are followed, each folder once (a link back to a folder already walked, a
  loop, is not walked again) and each file once where a link points at an image the walk lists
  under its own name (in the root or a linked folder; a link whose target is reached later
  through another linked folder is the one case listed twice);
- anything that is not a regular file (a named pipe, a socket, a device) is skipped with a
  warning naming it, and never opened: opening a pipe blocks forever.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pneumonia_cxr.data.loader import is_image_file

log = logging.getLogger(__name__)


def iter_image_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Each path as given (the loader judges a named file's content), folders walked."""
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = False
            for file in _walk(path, _Walk(roots=[path.resolve()])):
                found = True
                yield file
            if not found:
                log.warning("no image files (.jpeg/.jpg/.png/.dcm) under %s", path)
        else:
            yield path


@dataclass
class _Walk:
    roots: list[Path]
    """Resolved folders the walk lists by their own names (the root, linked folders)."""
    seen: set[tuple[int, int]] = field(default_factory=set)
    """(device, inode) of every folder walked: a link back to one is not walked again."""

    def lists(self, target: Path) -> bool:
        """Whether `target` (resolved) is an image the walk lists under its own name."""
        for root in self.roots:
            try:
                parts = target.relative_to(root).parts
            except ValueError:
                continue
            if is_image_file(target) and not any(part.startswith(".") for part in parts):
                return True
        return False


def _walk(folder: Path, walk: _Walk) -> Iterator[Path]:
    try:
        info = folder.stat()
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        log.warning("skipped folder %s: %s", folder, error.strerror or error)
        return
    if (info.st_dev, info.st_ino) in walk.seen:
        return  # a link back to a folder already walked
    walk.seen.add((info.st_dev, info.st_ino))
    for entry in ordered:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            mode = entry.stat().st_mode  # follows links
        except OSError:
            log.warning("skipped %s: a broken link or an unreadable entry", path)
            continue
        if stat.S_ISDIR(mode):
            if entry.is_symlink():
                walk.roots.append(path.resolve())
            yield from _walk(path, walk)
        elif not is_image_file(path):
            continue
        elif not stat.S_ISREG(mode):
            log.warning("skipped %s: not a regular file (a named pipe, socket or device)", path)
        elif entry.is_symlink() and walk.lists(path.resolve()):
            continue  # listed under its own name
        else:
            yield path


def path_text(path: str | Path) -> str:
    """A path as a table writes it: a name that is not valid UTF-8 keeps its bytes as
    backslash escapes (`\\xff`), so the row is written instead of the run dying."""
    text = os.fspath(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
