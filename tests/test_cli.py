"""The command line: the demo writes its table, JSON and plots; bad usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neuralode.cli import main


def test_demo_quick_writes_results_and_plots(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| problem | method |" in printed and "dopri5" in printed
    rows = json.loads((tmp_path / "demo.json").read_text())
    assert {r["method"] for r in rows} >= {"dopri5", "tsit5", "rk4", "euler"}
    kepler = [r for r in rows if r["problem"].startswith("Kepler") and r["method"] == "dopri5"]
    assert min(r["error"] for r in kepler) < 1e-5  # at rtol=1e-8 over one orbit
    for name in ("trajectories.png", "work_precision.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_help_and_unknown_command() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "neuralode", "--help"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "demo" in ok.stdout and "train" in ok.stdout
    assert "experiment" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "neuralode", "fly"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
