"""The Ray actor a stream worker runs in: it owns one :class:`~raystream.streams.worker.StreamWorker` and
the thread that loops over it, and answers ``status``/``query``/``stop`` from Ray's other threads.

Named ``streams.<application_id>.<n>`` in the raystream namespace, so ``raystream status`` (another
driver) finds the workers of every running application. Restarted by Ray when it dies (``max_restarts``):
the new incarnation rejoins the group and restores its tasks from their changelogs.

Concurrency: ``__init__`` starts the loop thread; ``status``, ``query`` and ``stop`` run on Ray's actor
threads (``max_concurrency`` > 1) and only read the worker's task table or set the stop flag.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import ray

from raystream.streams.topology import Topology
from raystream.streams.worker import StreamsConfig, StreamWorker

log = logging.getLogger(__name__)

WORKER_NAME_PREFIX = "streams."


def worker_name(application_id: str, index: int) -> str:
    return f"{WORKER_NAME_PREFIX}{application_id}.{index}"


def default_state_dir() -> str:
    """``$RAYSTREAM_DATA_DIR/streams`` (else ``~/.raystream/data/streams``) on the worker's own node."""
    base = os.environ.get("RAYSTREAM_DATA_DIR") or str(Path("~/.raystream/data").expanduser())
    return str(Path(base) / "streams")


class StreamWorkerActor:
    def __init__(self, topology: Topology, config: StreamsConfig, worker_id: str) -> None:
        if not config.state_dir:
            import dataclasses

            config = dataclasses.replace(config, state_dir=default_state_dir())
        self._topology, self._config, self._worker_id = topology, config, worker_id
        self._stop = threading.Event()
        self._worker: StreamWorker | None = None
        self._state = "STARTING"
        self._error: str | None = None
        self._processed = 0
        self._thread = threading.Thread(target=self._run, name=f"stream-{worker_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        worker = None
        try:
            worker = self._worker = StreamWorker(self._topology, self._config, self._worker_id)
            self._state = "RUNNING"
            while not self._stop.is_set():
                self._processed += worker.run_once()
        except BaseException as exc:  # a failed user function or a lost cluster: stop, report, keep the actor
            log.exception("stream worker %s failed", self._worker_id)
            self._error = f"{type(exc).__name__}: {exc}"
            self._state = "ERROR"
            if worker is not None:
                worker.error = exc
        finally:
            if worker is not None:
                try:
                    worker.close()
                except Exception:
                    log.exception("stream worker %s: close failed", self._worker_id)
            if self._state != "ERROR":
                self._state = "STOPPED"

    def ready(self) -> str:
        return self._state

    def status(self) -> dict[str, Any]:
        worker = self._worker
        base = {"worker": self._worker_id, "state": self._state, "error": self._error,
                "node_id": ray.get_runtime_context().get_node_id(), "records_processed": self._processed}
        if worker is None:
            return {**base, "tasks": {}}
        return {**worker.status(), **base}

    def query(self, store: str, key: bytes) -> tuple[bool, Any]:
        worker = self._worker
        return (False, None) if worker is None else worker.query(store, key)

    def stop(self, timeout_s: float = 60.0) -> str:
        """Stop the loop, commit, close the tasks (checkpoints) and leave the group; returns the end state."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self._state
