"""Smoke test of ``benchmarks/storage.py --quick``: it runs and prints one JSON object with every key.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "storage.py"


def test_quick_benchmark_prints_json_with_all_keys(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)

    for mode in ("fsync", "no_fsync"):
        assert {"mb_s", "records_s", "raw_mb_s", "ratio"} <= result["append"][mode].keys()
    assert isinstance(result["full_scan_read_mb_s"], (int, float))
    assert {"one_col_s", "all_cols_s", "speedup"} <= result["projection"].keys()
    assert {"mb", "seconds", "mb_s", "report"} <= result["recovery"].keys()
    assert result["recovery"]["report"]["clean_shutdown"] is False
    assert result["recovery"]["report"]["error"] is None
    assert len(result["targets"]) == 3
    assert all(isinstance(met, bool) for met in result["targets"].values())
    assert list(tmp_path.iterdir()) == [], "the benchmark must remove its temporary directory"
