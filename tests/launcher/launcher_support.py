"""Support for ``test_ray_up.py``: a loopback "machine" behind Debian's sshd, the on-prem variant of
``cluster.yaml``, and subprocesses that always end.

The machine (:class:`SshNode`) is ``/usr/sbin/sshd`` started by the test on a free 127.0.0.1 port, in its
own PID namespace (``unshare --pid --fork --mount-proc``). Two reasons:

- ``ray stop`` (the first head start command, and what ``ray down`` runs on the head) stops every Ray
  process it can see *by name*. On this shared machine that would kill other people's Rays; in the
  namespace it sees only the processes of the test's cluster.
- The namespace's first process is sshd: when it exits, the kernel kills whatever is left in the
  namespace, so even a failed ``ray down`` (or a killed pytest: ``unshare`` gets PR_SET_PDEATHSIG and
  ``--kill-child``) leaves no Ray running.

sshd's ``SetEnv`` gives every session the machine's environment: its own ``HOME`` (so ``~`` in
cluster.yaml — the Python environment, the synced checkout, ``~/.ray/auth_token``, ``~/.bashrc`` — is a
fresh directory, not this machine's /root), its own ``RAY_TMPDIR`` (Ray's session dirs and
``ray_current_cluster``, which a plain ``ray.init()`` elsewhere on this machine would otherwise join), and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every Ray port on 127.0.0.1).
"""

from __future__ import annotations

import copy
import ctypes
import getpass
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
DEV_VENV = Path(sys.prefix)  # the checkout's .venv, which runs pytest
DEV_PURELIB = Path(DEV_VENV, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")

# The head's default ports in cluster.yaml; the test gives each a free one (other Rays run here).
HEAD_PORT_FLAGS = {"--port": 6379, "--dashboard-port": 8265, "--dashboard-agent-listen-port": 52365,
                   "--ray-client-server-port": 10001}
SSHD_START_TIMEOUT_S = 20.0
SSHD_STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held open together, so no duplicates)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until(condition, timeout_s: float, message: str, interval_s: float = 0.2):
    """Poll ``condition`` until truthy (returned) or raise after ``timeout_s`` naming ``message``."""
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may raise while things settle
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {message} (last error: {last_exc!r})")


def launcher_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any Ray / raystream setting (no RAY_ADDRESS, no auth token of
    the caller), loopback-only Ray, plus ``overrides``. Every Ray command of the test runs with one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYSTREAM_"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.update(overrides)
    return env


@dataclass
class Finished:
    returncode: int
    output: str

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_logged(args: list[str], *, env: dict[str, str], log: Path, timeout_s: float,
               cwd: Path = REPO) -> Finished:
    """Run ``args`` with output to ``log`` (a file, not a pipe: ssh's ControlPersist master outlives
    ``ray up`` and would hold a pipe open). Past ``timeout_s`` its process group is terminated."""
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise AssertionError(f"{' '.join(args[:3])} did not finish within {timeout_s:.0f}s; "
                                 f"output:\n{_tail(log)}") from None
    return Finished(returncode, log.read_text(errors="replace"))


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)  # the group start_new_session gave our own child
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the on-prem variant -----------------------------------------------------------------------------

def onprem_variant(config: dict, *, cluster_name: str, ssh_key: Path, ssh_port: int,
                   head_ports: dict[str, int]) -> dict:
    """``cluster.yaml`` turned into the on-prem config its comment describes, for this machine.

    As the comment says: ``provider`` and ``auth`` replaced (the local provider with ``head_ip``
    127.0.0.1 and no workers; root with the test's key, through ``nc`` to the test's sshd port, since Ray
    has no SSH port option), ``available_node_types`` / ``head_node_type`` / ``head_setup_commands``
    deleted, ``max_workers`` set to the number of worker ips (0). For this machine, and nothing else:
    the head's default ports (``HEAD_PORT_FLAGS``) become ``head_ports``, because other Rays run here.
    Setup commands, file mounts and the rest of every start command stay as they are.
    """
    variant = copy.deepcopy(config)
    variant["cluster_name"] = cluster_name
    variant["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    variant["auth"] = {"ssh_user": "root", "ssh_private_key": str(ssh_key),
                       "ssh_proxy_command": f"nc %h {ssh_port}"}
    for field in ("available_node_types", "head_node_type", "head_setup_commands"):
        del variant[field]
    variant["max_workers"] = 0
    commands = list(variant["head_start_ray_commands"])
    for flag, default in HEAD_PORT_FLAGS.items():
        pattern = re.compile(rf"(?<![\w-]){re.escape(flag)}={default}\b")
        hits = sum(len(pattern.findall(cmd)) for cmd in commands)
        assert hits == 1, f"cluster.yaml's head_start_ray_commands should set {flag}={default} once, found {hits}"
        commands = [pattern.sub(f"{flag}={head_ports[flag]}", cmd) for cmd in commands]
    variant["head_start_ray_commands"] = commands
    return variant


# --- the machine ---------------------------------------------------------------------------------------

def provision_python(node_home: Path) -> Path:
    """Pre-install Ray in the node's ``~/raystream-venv`` (like an image with Ray baked in): a venv whose
    imports fall back to the checkout's .venv (a .pth line; not its .pth files, so not its editable
    raystream) and a ``ray`` script for it. The setup commands then skip creating the venv and
    ``pip install`` raystream from the synced checkout into it, with every dependency already there —
    the network is needed only for what pip's build isolation fetches (setuptools)."""
    venv = node_home / "raystream-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = venv / DEV_PURELIB.relative_to(DEV_VENV)
    (site / "raystream_test_dev_venv.pth").write_text(f"{DEV_PURELIB}\n")
    script = (DEV_VENV / "bin" / "ray").read_text().splitlines(keepends=True)
    assert script[0].startswith("#!"), script[0]
    ray_script = venv / "bin" / "ray"
    ray_script.write_text(f"#!{venv}/bin/python\n" + "".join(script[1:]))
    ray_script.chmod(0o755)
    return venv


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # unshare ignores SIGTERM


@dataclass
class SshNode:
    """The loopback machine: sshd as the first process of its own PID namespace (see module docstring).
    Not thread-safe; the test drives it from one thread."""

    root: Path
    port: int
    client_key: Path
    process: subprocess.Popen  # `unshare`, in our namespace; its child is sshd, pid 1 of the new one
    log: Path

    @classmethod
    def start(cls, root: Path, port: int, environment: dict[str, str]) -> SshNode:
        root.mkdir(parents=True, exist_ok=True)
        host_key, client_key = root / "ssh_host_ed25519_key", root / "id_launcher"
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "raystream-launcher-test",
                            "-f", str(key)], check=True, timeout=30)
        shutil.copy(f"{client_key}.pub", root / "authorized_keys")
        for value in environment.values():
            assert not re.search(r"\s", value), f"SetEnv values cannot hold whitespace: {value!r}"
        config = root / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "StrictModes no",  # the key lives under /tmp, which is world-writable
            "AllowUsers root",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxSessions 20",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in environment.items()),
            "",
        ]))
        isolated = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                                  text=True, timeout=30)
        assert isolated.returncode == 0, (
            "the test's machine needs a PID namespace (so that `ray stop` cannot reach other Rays here), "
            f"but `unshare --pid --fork --mount-proc` fails: {isolated.stderr.strip()}")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"sshd rejects {config}: {check.stderr}"
        log = root / "sshd.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
                 str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        node = cls(root, port, client_key, process, log)
        try:
            wait_until(node._ready, SSHD_START_TIMEOUT_S, f"sshd on 127.0.0.1:{port}")
        except BaseException:
            node.stop()
            raise
        return node

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"sshd exited with {self.process.returncode}:\n{_tail(self.log)}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
            return conn.recv(4).startswith(b"SSH-")

    def init_pid(self) -> int | None:
        """sshd's pid (in our namespace): the only child of ``unshare``."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0].pid if children else None

    def namespace(self) -> str:
        pid = self.init_pid()
        assert pid is not None, "sshd is not running"
        return os.readlink(f"/proc/{pid}/ns/pid")

    def processes(self) -> list[psutil.Process]:
        """Every live (non-zombie) process of the machine, sshd included."""
        namespace = self.namespace()
        found = []
        for proc in psutil.process_iter(["name", "status"]):
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def stop(self) -> None:
        """Stop sshd (the kernel then kills everything left in its namespace) and reap ``unshare``."""
        if self.process.poll() is None:
            pid = self.init_pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=SSHD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()  # --kill-child: the kernel SIGKILLs sshd and the namespace with it
                self.process.wait(timeout=SSHD_STOP_TIMEOUT_S)


# --- what must be gone afterwards -------------------------------------------------------------------------

def ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH command runner keeps its ControlMaster sockets for ``cluster_name`` (as in
    ray.autoscaler._private.command_runner.SSHCommandRunner)."""
    from ray.autoscaler._private.command_runner import HASH_MAX_LENGTH

    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:HASH_MAX_LENGTH]
    cluster = hashlib.sha256(cluster_name.encode()).hexdigest()[:HASH_MAX_LENGTH]
    return Path(f"/tmp/ray_ssh_{user}/{cluster}")


def close_ssh_masters(cluster_name: str) -> None:
    """End the SSH ControlMaster processes Ray left for ``cluster_name`` (ControlPersist keeps them 10 s)."""
    control_dir = ssh_control_dir(cluster_name)
    for socket_path in control_dir.glob("*"):
        subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={socket_path}", "127.0.0.1"],
                       capture_output=True, timeout=15)
    shutil.rmtree(control_dir, ignore_errors=True)
    try:
        control_dir.parent.rmdir()  # only if no other cluster's sockets are in it
    except OSError:
        pass


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``text`` (the test's unique directory)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.pid != me and proc.status() != psutil.STATUS_ZOMBIE and text in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_processes(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def copy_ray_logs(node_tmp: Path, dest: Path, limit_bytes: int = 2_000_000) -> None:
    """Keep the head's Ray logs (the newest session, each file cut to its last ``limit_bytes``)."""
    logs = node_tmp / "ray" / "session_latest" / "logs"
    if not logs.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for path in logs.iterdir():
        if path.is_file():
            data = path.read_bytes()[-limit_bytes:]
            (dest / path.name).write_bytes(data)
