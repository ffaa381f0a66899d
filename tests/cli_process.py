"""The `raystream` command in real subprocesses (for the integration tests that run it): free ports, a clean
environment, and `raystream gateway` serving until it is stopped by its process group's id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
GATEWAY_START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop ``process`` (started with ``start_new_session=True``) and its children by its group's id:
    SIGTERM, then SIGKILL if it is still running after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:  # the group is gone already
        process.wait(timeout=30)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the settings that would pick another Ray or raystream cluster
    (or another Ray token) for the command, with Ray kept quiet and local, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAYSTREAM_CONFIG", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@contextlib.contextmanager
def gateway_process(address: str, cluster: str, env: dict[str, str], wait_for) -> Iterator[str]:
    """`raystream --address ADDRESS --cluster CLUSTER gateway` on a free loopback port, in a new process group;
    yields its bootstrap address ("127.0.0.1:PORT") once it accepts connections, and stops the group by its
    id at the end (SIGTERM, then SIGKILL)."""
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        gateway = subprocess.Popen([str(BIN / "raystream"), "--address", address, "--cluster", cluster, "gateway",
                                    "--listen", f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr, text=True, start_new_session=True)

        def output() -> str:
            stderr.seek(0)
            return stderr.read()[-4000:]

        try:
            def listening_or_exited() -> bool:
                if gateway.poll() is not None:
                    return True
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            wait_for(listening_or_exited, timeout_s=GATEWAY_START_TIMEOUT_S, message="the gateway to listen")
            assert gateway.poll() is None, f"raystream gateway exited with {gateway.returncode}: {output()}"
            yield f"127.0.0.1:{port}"
        finally:
            stop_process_group(gateway)
