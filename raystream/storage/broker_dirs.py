"""Broker directories: one broker per log directory, enforced by a lock (Kafka's rule).

A node's raystream data lives under its root ``<data dir>/<cluster>/`` (the data dir is the node's
``RAYSTREAM_DATA_DIR``, else the cluster's ``data_dir``). Each broker owns one directory under it::

    <root>/broker-<id>/meta.properties      broker.id=<id>, cluster=<cluster> (written once, atomically)
    <root>/broker-<id>/.lock                flock'ed by the owning broker for its whole life
    <root>/broker-<id>/<topic>-<p>/         that broker's partition logs (raystream.storage.log)

Several Ray nodes may share one root (several nodes on one machine, or a shared filesystem such as NFS or
EFS): the lock makes each of them claim a different broker directory, so each node is its own broker with
its own logs. A root of the layout before broker directories (``<root>/meta.properties``, partition logs
directly in ``<root>``) is itself a claimable broker directory (its ``.lock`` is ``<root>/.lock``), so old
data stays readable.

Claim order (:func:`claim_broker_directory`): the first unlocked existing broker directory (lowest broker
id first), so a new Ray cluster on the same data directories gets its brokers and their data back;
otherwise a new ``broker-<proposed id>/``. A directory locked by an earlier owner on the *same* node (a
broker agent that was just killed and whose process has not exited yet) is waited for, bounded; one locked
by another node is skipped at once.

Concurrency contract: any number of claimers, in any processes on any hosts sharing the root, may run at
once; ``flock`` on the ``.lock`` file decides (locks belong to an open file description, so two claimers in
one process conflict too). A claimer holds its lock until :meth:`BrokerDirectory.release` or until its
process exits (the kernel drops the lock then, also after a crash). Callers must propose distinct ids to
claimers that run at the same time (two claimers proposed the same new id: the second one fails with
``LogDirectoryLockedError``). On NFS, ``flock`` is emulated with NFS byte-range locks (Linux >= 2.6.12),
whose release after a client crash waits for the server's lease to expire.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from raystream.errors import InvalidLogDirectoryError, LogDirectoryLockedError
from raystream.storage.files import TMP_SUFFIX, atomic_write

log = logging.getLogger(__name__)

META_PROPERTIES = "meta.properties"
LOCK_FILE = ".lock"
BROKER_DIR_PREFIX = "broker-"
_BROKER_DIR = re.compile(r"broker-(\d+)")
#: What a half-created broker directory may hold (a claimer died between mkdir and writing meta.properties).
_LEFTOVERS = {LOCK_FILE, META_PROPERTIES + TMP_SUFFIX}


def broker_dir_name(broker_id: int) -> str:
    return f"{BROKER_DIR_PREFIX}{broker_id}"


def read_meta_properties(directory: Path) -> dict[str, str] | None:
    """The ``key=value`` lines of ``directory/meta.properties``; None if there is none."""
    try:
        text = (directory / META_PROPERTIES).read_text()
    except FileNotFoundError:
        return None
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


@dataclasses.dataclass
class BrokerDirectory:
    """A claimed broker directory; its lock is held until :meth:`release` (or the process exits)."""

    broker_id: int
    log_dir: Path  # where the broker's partition directories live
    legacy: bool  # the root itself (the layout before broker directories)
    _fd: int | None = dataclasses.field(default=None, repr=False)

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BrokerDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_lock(directory: Path, owner: str) -> int | None:
    """An fd holding ``directory/.lock`` exclusively (the owner written into it), or None if it is held."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"owner={owner}\npid={os.getpid()}\n".encode(), 0)
    return fd


def _lock_owner(directory: Path) -> str | None:
    """The owner the current holder wrote into the lock file (advisory: for waiting and for messages)."""
    try:
        text = (directory / LOCK_FILE).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("owner="):
            return line[len("owner="):]
    return None


def _candidates(root: Path, cluster: str) -> list[tuple[int, Path, bool]]:
    """Existing broker directories under ``root``: (broker id, directory, legacy), lowest id first."""
    found: list[tuple[int, Path, bool]] = []
    dirs = [(root, True)] + [(d, False) for d in sorted(root.iterdir())
                             if _BROKER_DIR.fullmatch(d.name) and d.is_dir()]
    for directory, legacy in dirs:
        try:
            props = read_meta_properties(directory)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s; not claiming it", directory / META_PROPERTIES, exc)
            continue
        if props is None:
            continue
        try:
            broker_id = int(props["broker.id"])
        except (KeyError, ValueError):
            log.warning("%s has no valid broker.id; not claiming it", directory / META_PROPERTIES)
            continue
        if props.get("cluster", cluster) != cluster:
            log.warning("%s belongs to cluster %r, not %r; not claiming it", directory / META_PROPERTIES,
                        props.get("cluster"), cluster)
            continue
        found.append((broker_id, directory, legacy))
    return sorted(found, key=lambda c: (c[0], not c[2]))


def claim_broker_directory(root: str | os.PathLike, cluster: str, proposed_id: int, owner: str = "",
                           same_owner_wait_s: float = 10.0) -> BrokerDirectory:
    """Claim a broker directory under ``root`` (see the module docstring) and hold its lock.

    ``owner`` identifies the claimer's node (a Ray node id): a directory locked by that same owner is a
    predecessor that is still exiting, and is waited for up to ``same_owner_wait_s``. Raises
    ``LogDirectoryLockedError`` if ``broker-<proposed_id>`` must be created but is locked by someone else,
    ``InvalidLogDirectoryError`` if it exists holding something other than a broker directory.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + same_owner_wait_s
    while True:
        waiting_for: list[Path] = []
        for broker_id, directory, legacy in _candidates(root, cluster):
            fd = _try_lock(directory, owner)
            if fd is not None:
                props = read_meta_properties(directory) or {}  # stable now: only a lock holder writes it
                if props.get("broker.id") != str(broker_id):  # changed between the scan and the lock
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    continue
                log.info("claimed broker directory %s (broker %d)", directory, broker_id)
                return BrokerDirectory(broker_id, directory, legacy, fd)
            if owner and _lock_owner(directory) == owner:
                waiting_for.append(directory)
        if not waiting_for or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if waiting_for:
        log.warning("broker directories %s are still locked by an earlier owner on this node; creating a new "
                    "broker directory", [str(d) for d in waiting_for])
    return _create(root, cluster, proposed_id, owner)


def _create(root: Path, cluster: str, broker_id: int, owner: str) -> BrokerDirectory:
    directory = root / broker_dir_name(broker_id)
    directory.mkdir(exist_ok=True)
    fd = _try_lock(directory, owner)
    if fd is None:
        raise LogDirectoryLockedError(
            f"failed to acquire lock on {directory / LOCK_FILE} (held by {_lock_owner(directory) or 'unknown'}):"
            " another process is using this directory")
    try:
        props = read_meta_properties(directory)
        if props is not None:  # created and released by another claimer since our scan: adopt it
            if props.get("cluster", cluster) != cluster or props.get("broker.id") != str(broker_id):
                raise InvalidLogDirectoryError(f"{directory / META_PROPERTIES} holds {props}, not broker "
                                               f"{broker_id} of cluster {cluster!r}")
            return BrokerDirectory(broker_id, directory, False, fd)
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in _LEFTOVERS)
        if foreign:
            raise InvalidLogDirectoryError(f"{directory} is not a broker directory (no {META_PROPERTIES}; holds "
                                           f"{foreign[:5]})")
        atomic_write(directory / META_PROPERTIES, f"broker.id={broker_id}\ncluster={cluster}\n".encode())
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    log.info("created broker directory %s (broker %d)", directory, broker_id)
    return BrokerDirectory(broker_id, directory, False, fd)
