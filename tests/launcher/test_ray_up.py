"""``cluster.yaml`` for real: Ray's own config validation, then ``ray up -y`` / ``ray down -y`` end to end.

The end-to-end test runs the on-prem variant that cluster.yaml's comment describes (see
``launcher_support.onprem_variant``): ``ray up`` connects over SSH to a loopback machine the test
provides (Debian's sshd in its own PID namespace with its own HOME and Ray temp dir; why in
``launcher_support``), syncs the checkout and the token, runs the same setup commands (pip installs
raystream from the synced checkout into the machine's ``~/raystream-venv``) and the same start commands
(``ray stop``, ``RAY_AUTH_MODE=token ray start --head``, ``raystream start``) with free ports instead of the
defaults. A separate client process then connects with the token as docs/deploy.md says, creates a
topic, produces and consumes; ``ray down`` must leave no Ray process behind.

Skipped only when ``/usr/sbin/sshd`` is missing (``.ci/run`` installs openssh-server, rsync and
netcat-openbsd). Takes about a minute, mostly ``ray start`` on a small machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from launcher_support import (
    DEV_VENV,
    HEAD_PORT_FLAGS,
    REPO,
    SSHD,
    Finished,
    SshNode,
    close_ssh_masters,
    copy_ray_logs,
    free_loopback_ports,
    kill_processes,
    launcher_env,
    listening_addresses,
    onprem_variant,
    port_open,
    processes_mentioning,
    provision_python,
    run_logged,
    wait_until,
)

RAY = str(DEV_VENV / "bin" / "ray")
RAY_UP_TIMEOUT_S = 180.0
RAY_DOWN_TIMEOUT_S = 90.0
CLIENT_TIMEOUT_S = 90.0
# A driver that has no token (no RAY_AUTH_MODE, no ~/.ray/auth_token): exit code 3 when Ray refuses it.
NO_TOKEN_DRIVER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except Exception as exc:
    print("refused:", type(exc).__name__, exc)
    sys.exit(3)
print("connected without a token:", ray.nodes())
"""
# A driver run on the head as a Ray job: it finds the cluster and the client's topic.
JOB_DRIVER = "import ray, raystream as rs; ray.init(); rs.init(); print('topics:', rs.Admin().list_topics())"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # gRPC listens on v4-mapped IPv6 sockets


def load_cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def prepared(config: dict) -> dict:
    """``config`` as ``ray up`` sees it: Ray's defaults merged in, then Ray's schema and checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    result = prepare_config(config)
    validate_config(result)
    return result


def test_cluster_yaml_is_a_valid_ray_config():
    config = load_cluster_yaml()
    aws = prepared(config)
    assert aws["provider"]["type"] == "aws"
    head, worker = aws["available_node_types"]["head"], aws["available_node_types"]["worker"]
    assert aws["head_node_type"] == "head" and head["node_config"]["InstanceType"]
    assert worker["min_workers"] == worker["max_workers"] == aws["max_workers"] >= 2  # fixed brokers
    head_start = " ; ".join(aws["head_start_ray_commands"])
    assert aws["head_start_ray_commands"][0] == "ray stop"
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start  # dashboard and Jobs API on loopback only
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert aws["head_start_ray_commands"][-1] == "RAY_AUTH_MODE=token raystream start"
    assert "RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:6379" in " ; ".join(aws["worker_start_ray_commands"])
    assert aws["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for remote, local in aws["file_mounts"].items():
        if remote != "~/.ray/auth_token":
            assert (REPO / local).exists(), f"file mount {remote}: {local} is not in the checkout"
    assert any("boto3" in cmd for cmd in aws["head_setup_commands"])  # the AWS autoscaler needs it

    variant = prepared(onprem_variant(config, cluster_name="raystream-check", ssh_key=Path("/nonexistent"),
                                      ssh_port=2222, head_ports={f: 20000 + i for i, f in enumerate(HEAD_PORT_FLAGS)}))
    assert variant["provider"]["type"] == "local"
    assert variant["setup_commands"] == config["setup_commands"]
    assert variant["worker_start_ray_commands"] == config["worker_start_ray_commands"]


@dataclass
class Launch:
    """One run of cluster.yaml's on-prem variant: the directories, environments and machine it uses."""

    tmp_path: Path                 # logs and the variant (kept by pytest)
    base: Path                     # short-path scratch for everything else (removed afterwards)
    cluster_name: str
    head_ports: dict[str, int]
    up_env: dict[str, str]         # `ray up` / `ray down`: the user's machine, HOME with the token
    client_env: dict[str, str]     # drivers and CLIs with the token from the environment
    variant_path: Path
    node: SshNode | None = None
    token: str = ""
    ray_down_done: bool = False
    passed: bool = False

    def dir(self, name: str) -> Path:
        return self.base / name

    @property
    def node_home(self) -> Path:
        return self.dir("nh")

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.head_ports['--port']}"

    def run(self, args: list[str], log: str, *, env: dict[str, str] | None = None,
            timeout_s: float = CLIENT_TIMEOUT_S) -> Finished:
        """A client command, run in the client's HOME (Ray puts a driver's working directory on its
        workers' sys.path: the checkout's raystream/ must not shadow the cluster's)."""
        return run_logged(args, env=self.client_env if env is None else env, log=self.tmp_path / log,
                          timeout_s=timeout_s, cwd=self.dir("ch"))

    def launcher(self, command: str, log: str, timeout_s: float, *options: str) -> Finished:
        """``ray up`` / ``ray down`` of the variant, from the repository root as docs/deploy.md says."""
        return run_logged([RAY, command, "-y", *options, str(self.variant_path)], env=self.up_env,
                          log=self.tmp_path / log, timeout_s=timeout_s, cwd=REPO)


@pytest.fixture
def launch(tmp_path) -> Iterator[Launch]:
    """The user's machine (a token in its HOME) and the cluster's machine (sshd, Ray pre-installed), with
    cluster.yaml's on-prem variant written; torn down afterwards whatever happened."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} is not installed (apt-get install openssh-server rsync netcat-openbsd; .ci/run does)")
    for tool in ("ssh", "ssh-keygen", "rsync", "nc", "unshare"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install openssh-server rsync netcat-openbsd"
    # Short paths: Ray's unix sockets live under the machine's RAY_TMPDIR (a socket path has < 108 bytes).
    base = Path(tempfile.mkdtemp(prefix="rsl-", dir="/tmp"))
    for name in ("lh", "lt", "nh", "nt", "ch", "ct"):  # launcher, node, client: HOME and temp dir each
        (base / name).mkdir()
    ssh_port, *ports = free_loopback_ports(1 + len(HEAD_PORT_FLAGS))
    launch = Launch(
        tmp_path=tmp_path, base=base, cluster_name=f"raystream-launcher-{uuid.uuid4().hex[:8]}",
        head_ports=dict(zip(HEAD_PORT_FLAGS, ports, strict=True)),
        up_env=launcher_env(HOME=str(base / "lh"), TMPDIR=str(base / "lt"), RAY_TMPDIR=str(base / "lt")),
        client_env=launcher_env(HOME=str(base / "ch"), TMPDIR=str(base / "ct"), RAY_TMPDIR=str(base / "ct"),
                                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(base / "lh" / ".ray" / "auth_token")),
        variant_path=tmp_path / "cluster-onprem.yaml")
    try:
        # The user's step 1 (docs/deploy.md): the cluster's token, in the launching machine's HOME.
        generated = launch.run([RAY, "get-auth-token", "--generate"], "token.log", env=launch.up_env)
        assert generated.returncode == 0, generated.tail()
        launch.token = (base / "lh" / ".ray" / "auth_token").read_text().strip()
        provision_python(launch.node_home)
        launch.node = SshNode.start(base / "ssh", ssh_port, {
            "HOME": str(launch.node_home), "RAY_TMPDIR": str(base / "nt"),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        variant = onprem_variant(load_cluster_yaml(), cluster_name=launch.cluster_name,
                                 ssh_key=launch.node.client_key, ssh_port=ssh_port, head_ports=launch.head_ports)
        launch.variant_path.write_text(yaml.safe_dump(variant, sort_keys=False))
        yield launch
    finally:
        leftovers = _tear_down(launch)
    assert not leftovers, f"processes outlived the test: {[(p.pid, p.info.get('cmdline')) for p in leftovers]}"


def _tear_down(launch: Launch) -> list:
    """Every step runs even if an earlier one fails, and none hides the test's own error. Returns the
    processes still mentioning the test's directory after all that (killed by pid)."""
    steps = []
    if not launch.passed:
        steps.append(lambda: copy_ray_logs(launch.dir("nt"), launch.tmp_path / "head-ray-logs"))
    if launch.node is not None and not launch.ray_down_done and launch.variant_path.exists():
        steps.append(lambda: launch.launcher("down", "ray-down.log", RAY_DOWN_TIMEOUT_S))
    steps.append(lambda: close_ssh_masters(launch.cluster_name))
    if launch.node is not None:
        steps.append(launch.node.stop)  # and with sshd, whatever is left of the machine's processes
    for step in steps:
        try:
            step()
        except Exception as exc:  # report, and go on cleaning up
            print(f"cleanup step failed: {exc!r}", file=sys.stderr)
    leftovers = processes_mentioning(str(launch.base))
    kill_processes(leftovers)
    shutil.rmtree(launch.base, ignore_errors=True)
    return leftovers


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_up_then_client_then_ray_down(launch):
    up = launch.launcher("up", "ray-up.log", RAY_UP_TIMEOUT_S, "--no-config-cache", "--log-color", "false")
    assert up.returncode == 0, f"ray up failed:\n{up.tail()}"
    ray_pids = _check_head(launch)
    _check_dashboard_auth(launch.head_ports["--dashboard-port"], launch.token)
    _check_clients(launch)

    down = launch.launcher("down", "ray-down.log", RAY_DOWN_TIMEOUT_S, "--log-color", "false")
    launch.ray_down_done = True
    assert down.returncode == 0, f"ray down failed:\n{down.tail()}"
    gcs_port = launch.head_ports["--port"]
    wait_until(lambda: not port_open(gcs_port), 30, f"the GCS on port {gcs_port} to stop after ray down")
    wait_until(lambda: not [p for p in launch.node.processes() if not p.name().startswith("sshd")], 30,
               "every Ray process of the machine to exit after ray down")
    assert not [pid for pid in ray_pids if _alive(pid)], "Ray processes outlived ray down"
    launch.passed = True


def _check_head(launch: Launch) -> set[int]:
    """The head runs, set up as cluster.yaml says, on loopback only. Returns its processes' pids."""
    assert port_open(launch.head_ports["--port"]), f"no GCS at {launch.gcs} after ray up"
    home = launch.node_home
    assert (home / "raystream-venv" / "bin" / "raystream").exists(), "the setup did not install raystream"
    assert (home / ".ray" / "auth_token").read_text().strip() == launch.token, "the token was not synced"
    assert "source ~/raystream-venv/bin/activate" in (home / ".bashrc").read_text()
    processes = [p for p in launch.node.processes() if not p.name().startswith("sshd")]
    names = {p.name() for p in processes}
    assert {"gcs_server", "raylet"} <= names, f"no Ray head on the machine: {sorted(names)}"
    pids = {p.pid for p in processes}
    listening = listening_addresses(pids)
    assert listening and {ip for ip, _ in listening} <= LOOPBACK, f"Ray listens beyond loopback: {listening}"
    return pids


def _check_clients(launch: Launch) -> None:
    """The CLI, a driver without the token, a raystream client with it, and a Ray job."""
    status = launch.run([RAY, "status", "--address", launch.gcs], "ray-status.log", timeout_s=60)
    assert status.returncode == 0 and "Active" in status.output, status.tail()

    no_token = launch.run([sys.executable, "-c", NO_TOKEN_DRIVER, launch.gcs], "client-without-token.log",
                          env=launcher_env(HOME=str(launch.dir("ch")), RAY_TMPDIR=str(launch.dir("ct"))))
    assert no_token.returncode == 3 and "InvalidAuthToken" in no_token.output, \
        f"a driver without the token was not refused for want of it:\n{no_token.tail()}"

    topic = f"launcher-{uuid.uuid4().hex[:6]}"
    client = launch.run([sys.executable, str(Path(__file__).with_name("launcher_client.py")), launch.gcs, topic],
                        "client.log")
    assert client.returncode == 0, f"client failed:\n{client.tail()}"
    _check_client_result(json.loads(client.output.strip().splitlines()[-1]), launch.node_home)

    # A job through the Jobs API: how a laptop runs a driver (through `ray dashboard`'s tunnel).
    job = launch.run([RAY, "job", "submit", "--address", f"http://127.0.0.1:{launch.head_ports['--dashboard-port']}",
                      "--", "python", "-c", JOB_DRIVER], "ray-job.log")
    assert job.returncode == 0 and f"topics: ['{topic}']" in job.output, job.tail()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _check_dashboard_auth(port: int, token: str) -> None:
    """The dashboard (and the Jobs API behind it) answers only with the token."""
    base = f"http://127.0.0.1:{port}"

    def get(path: str, token_value: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(base + path)
        if token_value is not None:
            request.add_header("Authorization", f"Bearer {token_value}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    mode = wait_until(lambda: get("/api/authentication_mode"), 60, f"the dashboard on {base}")
    assert mode[0] == 200 and json.loads(mode[1]).get("authentication_mode") == "token", mode
    assert get("/api/version")[0] == 401
    assert get("/api/version", "not-the-token")[0] == 403
    status, body = get("/api/version", token)
    assert status == 200 and json.loads(body).get("ray_version"), body


def _check_client_result(result: dict, node_home: Path) -> None:
    sent, read = result["sent"], result["read"]
    assert len(sent) == 20
    assert sorted(read, key=lambda r: (r["partition"], r["offset"])) == \
        sorted(sent, key=lambda r: (r["partition"], r["offset"])), result
    for partition in {r["partition"] for r in sent}:  # offsets of each partition are 0, 1, 2, ...
        offsets = sorted(r["offset"] for r in sent if r["partition"] == partition)
        assert offsets == list(range(len(offsets))), (partition, offsets)
    for key in {r["key"] for r in sent}:  # a key always lands on one partition
        assert len({r["partition"] for r in sent if r["key"] == key}) == 1, key
    assert result["nodes"] == ["127.0.0.1"], result["nodes"]
    # The cluster runs the raystream that the setup commands installed from the synced checkout.
    venv = node_home / "raystream-venv"
    assert result["runs_from"]["python"] == str(venv / "bin" / "python"), result["runs_from"]
    assert Path(result["runs_from"]["raystream"]).is_relative_to(venv / "lib"), result["runs_from"]
    # One broker, on the head, keeping its logs in the machine's HOME: `raystream start` there made the controller.
    assert [(b["alive"], b["data_dir"]) for b in result["brokers"]] == [(True, str(node_home / ".raystream" / "data"))]
