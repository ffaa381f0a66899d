"""Every notebook in notebooks/ runs top to bottom in a fresh kernel of this interpreter (as in CI).

Each notebook starts its own embedded raystream (``rs.init`` → a new local Ray) inside the kernel
process; RAY_ADDRESS is removed from the kernel's environment so it never joins this test session's Ray.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
# Modules a notebook needs beyond raystream's core; its test is skipped while they do not exist.
REQUIRES = {"ray_data_pipeline.ipynb": ["raystream.data"]}
KERNEL_NAME = "raystream-test-python"


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "event_sourcing.ipynb", "ray_data_pipeline.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs (strip them)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution_count"


def _install_kernel_spec(jupyter_dir: Path) -> None:
    """A kernel spec of our own pointing at this interpreter (sys.executable: the venv's python), found
    through JUPYTER_PATH, so no `ipykernel install` is needed beforehand and no other python3 kernel spec
    on the machine is picked."""
    spec_dir = jupyter_dir / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "raystream tests", "language": "python",
    }))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for module in REQUIRES.get(path.name, []):
        pytest.importorskip(module)

    nb = nbformat.read(path, as_version=4)
    # First, a check that the kernel really runs this interpreter and sees no RAY_ADDRESS.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        "import os, sys\n"
        f"assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}, sys.executable\n"
        "assert 'RAY_ADDRESS' not in os.environ"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", MPLBACKEND="Agg",
               RAYSTREAM_DATA_DIR=str(tmp_path / "raystream-data"))  # never the user's home, whatever a cell does
    _install_kernel_spec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The client owns its kernel manager, so the kernel is shut down when execute returns.
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=300,
                                     resources={"metadata": {"path": str(workdir)}})
    started = time.monotonic()
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as exc:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the traceback without terminal colours
        pytest.fail(f"{path.name} failed:\n{plain}")
    elapsed = time.monotonic() - started
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name}: {elapsed:.1f}s")
