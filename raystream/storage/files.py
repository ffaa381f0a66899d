"""Small-file durability helpers: atomic state files and directory fsync.

State files (recovery point, leader-epoch cache, log metadata) are replaced atomically: written to a
temporary file, fsynced, renamed over the old one, then the directory is fsynced so the rename itself is
durable. A reader therefore sees either the old or the new content, never a torn mix.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_state(path: Path, state: object) -> None:
    atomic_write(path, msgpack.packb(state))


def read_state(path: Path, default: object = None) -> object:
    """The state stored at ``path``; ``default`` if it does not exist. A leftover ``.tmp`` is ignored."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return default
    return msgpack.unpackb(data, strict_map_key=False)
