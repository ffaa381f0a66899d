"""Local state stores of stream processing (Kafka Streams' ``KeyValueStore`` and ``WindowStore``).

One SQLite database file per stream task (``<state_dir>/<app_id>/<task_id>/state.db``) holds the task's
named stores, one table each. Keys and values are ``bytes``: encoding is the caller's job (see
:mod:`raystream.streams.serde`). Every store is backed by a compacted changelog topic
(:func:`changelog_topic`); the changelog, not the local file, is the source of truth, which is why the file
is written with ``synchronous=NORMAL`` and why a task that finds no :meth:`StateDB.read_checkpoint` file
wipes its stores and restores them from the changelog.

Window stores write their changelog records under :func:`encode_window_key` so that compaction keeps one
record per (key, window).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from raystream.core.names import validate_topic_name
from raystream.errors import ClosedError
from raystream.storage.files import atomic_write

#: Bound variables per ``IN (...)`` list: well under SQLite's limit (32766 since 3.32, 999 before).
CHUNK = 500
#: Rows per page of :meth:`KeyValueStore.items`: pages, not an open cursor, so a slow consumer of the
#: iterator never holds a read snapshot (which would stop WAL checkpoints) or a lock between rows.
PAGE = 1000
CHECKPOINT_SUFFIX = ".checkpoint"
_STORE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_KINDS = {"kv": "key-value", "win": "window"}
_BYTES = frozenset({bytes})
_BYTES_OR_NONE = frozenset({bytes, type(None)})


def changelog_topic(application_id: str, store_name: str) -> str:
    """The changelog topic of a store, named as Kafka Streams names it; raises InvalidTopicError if the
    application id makes it an illegal topic name."""
    _check_store_name(store_name)
    return validate_topic_name(f"{application_id}-{store_name}-changelog")


def encode_window_key(key: bytes, start: int) -> bytes:
    """The changelog key of a window: the window start (8 bytes, big-endian, signed) then the key."""
    if type(key) is not bytes:
        raise TypeError(f"window keys must be bytes, got {type(key).__name__}")
    return _int(start, "window start").to_bytes(8, "big", signed=True) + key


def decode_window_key(data: bytes) -> tuple[bytes, int]:
    """The (key, window start) of a changelog key written by :func:`encode_window_key`."""
    if len(data) < 8:
        raise ValueError(f"a window changelog key has at least 8 bytes, got {len(data)}")
    return bytes(data[8:]), int.from_bytes(data[:8], "big", signed=True)


def _check_store_name(name: object) -> str:
    if not isinstance(name, str) or not _STORE_NAME.fullmatch(name):
        raise ValueError(f"store name must match [A-Za-z0-9._-]+, got {name!r}")
    return name


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return int(value.__index__())  # accepts numpy integers, refuses floats
    except AttributeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def _column(values: Any) -> list:
    """A list from a list, a tuple, a pyarrow array or a numpy array (of bytes objects)."""
    if isinstance(values, list):
        return values
    if hasattr(values, "to_pylist"):
        return values.to_pylist()
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)


def _check_types(values: Iterable[object], allowed: frozenset, what: str) -> None:
    # set(map(type, ...)) runs in C: checking 100k values costs a few ms, not a Python loop per row.
    bad = set(map(type, values)) - allowed
    if bad:
        raise TypeError(f"{what} must be bytes, got {sorted(t.__name__ for t in bad)}")


def _last_writes(keys: Sequence[Any], values: Sequence[bytes | None]) -> tuple[list, list]:
    """Upsert rows and delete rows of a batch applied in order: the last write per key wins."""
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys but {len(values)} values")
    _check_types(values, _BYTES_OR_NONE, "values")
    last = dict(zip(keys, values, strict=True))
    puts = [(*k, v) if isinstance(k, tuple) else (k, v) for k, v in last.items() if v is not None]
    deletes = [k if isinstance(k, tuple) else (k,) for k, v in last.items() if v is None]
    return puts, deletes


class StateDB:
    """The state stores of one stream task, in one SQLite file.

    Concurrency contract: one writer thread (the task) and readers from any thread (interactive queries).
    The writer's connection is guarded by a lock that :meth:`begin` holds until :meth:`commit`, so a batch
    is applied atomically and another thread that writes waits for it. Reads from the thread that holds
    the open transaction see its uncommitted writes; reads from any other thread go through a second
    (read-only) connection that sees the last committed state and does not wait for the writer (WAL).
    Both connections are opened with ``check_same_thread=False`` and used only under their lock.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.path.with_name(self.path.name + CHECKPOINT_SUFFIX)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._txn_owner: int | None = None
        self._closed = False
        self._stores: dict[str, KeyValueStore | WindowStore] = {}
        self._conn = self._connect()
        # WAL: readers do not block the writer. synchronous=NORMAL: a commit does not fsync, so a power cut
        # may lose the last commits; the changelog topic is the source of truth, and write_checkpoint
        # makes the file durable before it records offsets, so a store never claims data it lost.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._read_conn = self._connect()
        self._read_conn.execute("PRAGMA query_only=1")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module issues no implicit BEGIN; transactions are ours.
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)

    # -- connections -------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"state db {self.path} is closed")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._txn_owner == threading.get_ident():
            self._check_open()
            yield self._conn
            return
        with self._read_lock:
            self._check_open()
            yield self._read_conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside a transaction: the open one, or one of its own for this call."""
        if self._txn_owner == threading.get_ident():
            self._check_open()
            yield self._conn
            return
        with self._write_lock:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- transactions ------------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a transaction in this thread; every write until :meth:`commit` lands atomically."""
        if self._txn_owner == threading.get_ident():
            raise RuntimeError("a transaction is already open in this thread")
        self._write_lock.acquire()
        try:
            self._check_open()
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._write_lock.release()
            raise
        self._txn_owner = threading.get_ident()

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, statement: str) -> None:
        if self._txn_owner != threading.get_ident():
            raise RuntimeError(f"{statement}: no transaction is open in this thread")
        try:
            self._conn.execute(statement)
        finally:
            if self._conn.in_transaction:  # a failed COMMIT (disk full) leaves it open: undo it
                self._conn.execute("ROLLBACK")
            self._txn_owner = None
            self._write_lock.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StateDB]:
        """``with db.transaction():`` commits the block's writes, or rolls them all back if it raises."""
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    # -- stores ------------------------------------------------------------------------------------------
    def key_value_store(self, name: str) -> KeyValueStore:
        store = self._store(name, "kv", "(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
        if not isinstance(store, KeyValueStore):
            store = self._stores[name] = KeyValueStore(self, name)
        return store

    def window_store(self, name: str, retention_ms: int) -> WindowStore:
        retention_ms = _int(retention_ms, "retention_ms")
        if retention_ms < 0:
            raise ValueError(f"retention_ms must be >= 0, got {retention_ms}")
        store = self._store(name, "win", "(key BLOB NOT NULL, start INTEGER NOT NULL, value BLOB NOT NULL, "
                                         "PRIMARY KEY (key, start)) WITHOUT ROWID")
        if not isinstance(store, WindowStore) or store.retention_ms != retention_ms:
            store = self._stores[name] = WindowStore(self, name, retention_ms)
        return store

    def _store(self, name: str, kind: str, columns: str) -> KeyValueStore | WindowStore | None:
        """The store already opened under ``name``, after creating its table; None if not opened yet."""
        _check_store_name(name)
        with self._writing() as conn:
            for other in _KINDS.keys() - {kind}:
                sql = "SELECT 1 FROM sqlite_master WHERE name = ?"
                if conn.execute(sql, (f"{other}.{name}",)).fetchone():
                    raise ValueError(f"store {name!r} is a {_KINDS[other]} store, not a {_KINDS[kind]} store")
            # The name matched [A-Za-z0-9._-]+, so quoting it as an identifier is safe.
            conn.execute(f'CREATE TABLE IF NOT EXISTS "{kind}.{name}" {columns}')
            if kind == "win":  # fetch_all and expire select by window start across keys
                conn.execute(f'CREATE INDEX IF NOT EXISTS "{kind}.{name}.start" ON "{kind}.{name}" (start)')
        return self._stores.get(name)

    def wipe(self) -> None:
        """Delete every row of every store in the file (before a full restore from the changelogs)."""
        with self._writing() as conn:
            sql = ("SELECT name FROM sqlite_master "
                   "WHERE type = 'table' AND (name GLOB 'kv.*' OR name GLOB 'win.*')")
            tables = [row[0] for row in conn.execute(sql)]
            for table in tables:
                conn.execute(f'DELETE FROM "{table}"')

    def size_bytes(self) -> int:
        """Bytes on disk: the database file and its write-ahead log."""
        self._check_open()
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    # -- checkpoint file ---------------------------------------------------------------------------------
    def write_checkpoint(self, offsets: dict[str, int]) -> None:
        """Record the changelog offsets the stores hold (changelog topic -> next offset to restore from).

        Call it on a clean close only, outside a transaction. It first folds the WAL into the database file
        (a checkpoint, which fsyncs under synchronous=NORMAL), so the offsets never claim writes a power cut
        could still take away; then it replaces the file atomically.
        """
        if not isinstance(offsets, dict):
            raise TypeError(f"offsets must be a dict, got {type(offsets).__name__}")
        clean = {validate_topic_name(topic): _int(offset, f"offset of {topic}")
                 for topic, offset in offsets.items()}
        if any(offset < 0 for offset in clean.values()):
            raise ValueError(f"offsets must be >= 0, got {clean}")
        if self._txn_owner == threading.get_ident():
            raise RuntimeError("write_checkpoint inside an open transaction would record uncommitted state")
        with self._write_lock:
            self._check_open()
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError(f"could not checkpoint the WAL of {self.path} (busy); no offsets written")
        atomic_write(self.checkpoint_path, json.dumps(clean, sort_keys=True).encode())

    def read_checkpoint(self) -> dict[str, int] | None:
        """The offsets of the last clean close; None if there is no checkpoint file or it is unreadable
        (either way the caller must wipe the stores and restore from the beginning of the changelogs)."""
        self._check_open()
        try:
            offsets = json.loads(self.checkpoint_path.read_bytes())
        except (FileNotFoundError, ValueError):  # none, or torn/foreign content: no promise, restore all
            return None
        if not isinstance(offsets, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in offsets.items()):
            return None
        return offsets

    def delete_checkpoint(self) -> None:
        """Delete the checkpoint file: once the task writes again, its offsets no longer describe the
        stores (read it, then delete it, when the task opens)."""
        self._check_open()
        self.checkpoint_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file; an open transaction of this thread is rolled back (one of another thread is
        waited for). Idempotent."""
        if self._txn_owner == threading.get_ident():
            self.rollback()
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._read_conn.close()
            self._conn.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateDB({str(self.path)!r}{', closed' if self._closed else ''})"


class KeyValueStore:
    """A named key-value store of a :class:`StateDB` (its concurrency contract applies)."""

    def __init__(self, db: StateDB, name: str) -> None:
        self.name = name
        self._db = db
        self._table = f'"kv.{name}"'

    def get(self, key: bytes) -> bytes | None:
        _check_types((key,), _BYTES, "keys")
        with self._db._reading() as conn:
            row = conn.execute(f"SELECT value FROM {self._table} WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The present keys' values (absent keys are left out): one query per :data:`CHUNK` keys."""
        keys = list(dict.fromkeys(_column(keys)))
        _check_types(keys, _BYTES, "keys")
        found: dict[bytes, bytes] = {}
        with self._db._reading() as conn:
            for i in range(0, len(keys), CHUNK):
                chunk = keys[i:i + CHUNK]
                sql = f"SELECT key, value FROM {self._table} WHERE key IN ({','.join('?' * len(chunk))})"
                found.update(conn.execute(sql, chunk))
        return found

    def put_many(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write (key, value) pairs in order; a None value deletes the key (a tombstone)."""
        last = dict(items)  # in C; keeps each key's last write
        self.put_columns(list(last), list(last.values()))

    def put_columns(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """The vectorised :meth:`put_many`: a column of keys and one of values (lists, or pyarrow/numpy
        arrays of binary, where a null is a tombstone), applied in order."""
        keys, values = _column(keys), _column(values)
        _check_types(keys, _BYTES, "keys")
        puts, deletes = _last_writes(keys, values)
        with self._db._writing() as conn:
            conn.executemany(f"INSERT OR REPLACE INTO {self._table} (key, value) VALUES (?, ?)", puts)
            conn.executemany(f"DELETE FROM {self._table} WHERE key = ?", deletes)

    def put(self, key: bytes, value: bytes | None) -> None:
        self.put_columns([key], [value])

    def delete(self, key: bytes) -> None:
        self.put_columns([key], [None])

    def restore(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """Apply a chunk of changelog records in order (last write per key wins; None deletes)."""
        self.put_columns(keys, values)

    def items(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs in key order (bytewise), ``start <= key < end``; a bound of None is open."""
        _check_types([b for b in (start, end) if b is not None], _BYTES, "range bounds")
        lower, op = start, ">="
        while True:
            where, args = [], []
            if lower is not None:
                where.append(f"key {op} ?")
                args.append(lower)
            if end is not None:
                where.append("key < ?")
                args.append(end)
            sql = (f"SELECT key, value FROM {self._table} {'WHERE ' + ' AND '.join(where) if where else ''} "
                   f"ORDER BY key LIMIT {PAGE}")
            with self._db._reading() as conn:
                rows = conn.execute(sql, args).fetchall()
            yield from rows
            if len(rows) < PAGE:
                return
            lower, op = rows[-1][0], ">"

    def count(self) -> int:
        with self._db._reading() as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0]


class WindowStore:
    """A named store of windowed aggregates, rows keyed by (key, window start ms), of a :class:`StateDB`
    (its concurrency contract applies). Windows starting before ``stream_time - retention_ms`` are
    deleted by :meth:`expire`."""

    def __init__(self, db: StateDB, name: str, retention_ms: int) -> None:
        self.name = name
        self.retention_ms = retention_ms
        self._db = db
        self._table = f'"win.{name}"'

    def get_many(self, pairs: Sequence[tuple[bytes, int]]) -> dict[tuple[bytes, int], bytes]:
        pairs = list(dict.fromkeys((key, _int(start, "window start")) for key, start in pairs))
        _check_types([key for key, _ in pairs], _BYTES, "keys")
        found: dict[tuple[bytes, int], bytes] = {}
        step = CHUNK // 2  # two variables per pair
        with self._db._reading() as conn:
            for i in range(0, len(pairs), step):
                chunk = pairs[i:i + step]
                sql = (f"SELECT key, start, value FROM {self._table} WHERE (key, start) IN "
                       f"(VALUES {','.join(['(?, ?)'] * len(chunk))})")
                found.update(((key, start), value) for key, start, value in
                             conn.execute(sql, [x for pair in chunk for x in pair]))
        return found

    def put_many(self, items: Iterable[tuple[bytes, int, bytes | None]]) -> None:
        """Write (key, window start, value) rows in order; a None value deletes the window."""
        keys, starts, values = [], [], []
        for key, start, value in items:
            keys.append(key)
            starts.append(start)
            values.append(value)
        self.put_columns(keys, starts, values)

    def put_columns(self, keys: Sequence[bytes], starts: Sequence[int],
                    values: Sequence[bytes | None]) -> None:
        """The vectorised :meth:`put_many`: columns of keys, window starts and values (lists or arrays)."""
        keys, starts, values = _column(keys), _column(starts), _column(values)
        _check_types(keys, _BYTES, "keys")
        if set(map(type, starts)) - {int}:
            starts = [_int(start, "window start") for start in starts]
        puts, deletes = _last_writes(list(zip(keys, starts, strict=True)), values)
        with self._db._writing() as conn:
            conn.executemany(f"INSERT OR REPLACE INTO {self._table} VALUES (?, ?, ?)", puts)
            conn.executemany(f"DELETE FROM {self._table} WHERE key = ? AND start = ?", deletes)

    def fetch(self, key: bytes, time_from: int, time_to: int) -> list[tuple[int, bytes]]:
        """(window start, value) of ``key``'s windows starting in [time_from, time_to], by start."""
        _check_types((key,), _BYTES, "keys")
        sql = f"SELECT start, value FROM {self._table} WHERE key = ? AND start BETWEEN ? AND ? ORDER BY start"
        with self._db._reading() as conn:
            return conn.execute(sql, (key, _int(time_from, "time_from"), _int(time_to, "time_to"))).fetchall()

    def fetch_all(self, time_from: int, time_to: int) -> list[tuple[bytes, int, bytes]]:
        """(key, window start, value) of every window starting in [time_from, time_to], by (start, key)."""
        sql = f"SELECT key, start, value FROM {self._table} WHERE start BETWEEN ? AND ? ORDER BY start, key"
        with self._db._reading() as conn:
            return conn.execute(sql, (_int(time_from, "time_from"), _int(time_to, "time_to"))).fetchall()

    def expire(self, stream_time: int) -> int:
        """Delete the windows starting before ``stream_time - retention_ms``; the number deleted."""
        cutoff = _int(stream_time, "stream_time") - self.retention_ms
        with self._db._writing() as conn:
            return conn.execute(f"DELETE FROM {self._table} WHERE start < ?", (cutoff,)).rowcount

    def count(self) -> int:
        with self._db._reading() as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0]

    def restore(self, keys: Sequence[bytes], values: Sequence[bytes | None]) -> None:
        """Apply a chunk of changelog records (keys from :func:`encode_window_key`) in order."""
        keys = _column(keys)
        _check_types(keys, _BYTES, "changelog keys")
        if any(len(key) < 8 for key in keys):
            raise ValueError("a window changelog key has at least 8 bytes (the window start)")
        starts = [int.from_bytes(key[:8], "big", signed=True) for key in keys]
        self.put_columns([key[8:] for key in keys], starts, values)

    def __repr__(self) -> str:
        return f"WindowStore({self.name!r}, retention_ms={self.retention_ms})"
