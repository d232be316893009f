"""Atomic file writes: fill a temporary file beside the target, then rename it into place.

Every file the tools write (exports, Triton repositories, reports, figures, the decode cache)
goes through here, so a reader (a server reloading a model, Triton polling its repository, a
second training run) never sees half a file, and a failure leaves the previous file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp's files are 0600)."""
    umask = os.umask(0)  # the umask can only be read by setting it
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to fill; it replaces ``path`` when the block ends.

    An exception in the block removes the temporary file and leaves ``path`` untouched; so does
    a block that deletes the temporary file itself (e.g. an export whose check failed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(default_mode())
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a part."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
