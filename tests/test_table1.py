"""The Table 1 experiment on a tiny budget: the table, its paper columns, and memory that
stays flat for the adjoint ODE-Net while RK-Net's grows with its number of steps."""

from __future__ import annotations

import json

import pytest

from neuralode.cli import main

pytest.importorskip("sklearn", reason="the tiny Table 1 run uses scikit-learn's digits")


def test_table1_tiny_budget_writes_the_table(tmp_path, capsys) -> None:
    argv = ["experiment", "table1", "--data", "digits", "--train-subset", "32"]
    argv += ["--test-subset", "16", "--epochs", "1", "--channels", "8", "--batch-size", "16"]
    argv += ["--threads", "1", "--no-plots", "--memory-batch", "4", "--out", str(tmp_path)]
    argv += ["--memory-tolerances", "0.1", "0.0001", "--memory-step-sizes", "0.5", "0.125"]
    argv += ["--kinetic", "0.01"]  # regularises ODE-Net and RK-Net; ResNet has no ODE block
    assert main(argv) == 0
    table = (tmp_path / "table1.md").read_text()
    assert table == capsys.readouterr().out.strip() + "\n"
    # the 10-minute recipe is the default; the regulariser is named in the header
    assert "adamw lr 0.006 cosine" in table and "rtol 0.01 atol 0.01 (direct)" in table
    assert "regularised by KineticEnergy(weight=0.01)" in table
    assert "label smoothing 0.1, errors of the weight average (EMA decay 0.995)" in table
    for text in ("| ODE-Net |", "| ResNet |", "| RK-Net |", "0.42%", "0.60M", "O(1)", "O(L~)"):
        assert text in table
    results = json.loads((tmp_path / "table1.json").read_text())
    params = {r["model"]: r["params"] for r in results["rows"]}
    assert all(r["test_error_raw"] is not None for r in results["rows"])  # --ema 0.995
    assert params["odenet"] == params["rknet"] < params["resnet"]
    ode = [r for r in results["memory"] if r["model"] == "odenet"]
    rk = [r for r in results["memory"] if r["model"] == "rknet"]
    assert ode[1]["nfe_forward"] > ode[0]["nfe_forward"]
    assert ode[1]["memory_mb"] == pytest.approx(ode[0]["memory_mb"], rel=1e-6)
    assert rk[1]["nfe_forward"] == 4 * rk[0]["nfe_forward"]
    assert rk[1]["memory_mb"] > 1.5 * rk[0]["memory_mb"]
    for name in ("odenet", "resnet", "rknet"):
        assert (tmp_path / name / "metrics.jsonl").exists()
    lines = {
        name: json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
        for name in ("odenet", "resnet", "rknet")
    }
    assert lines["resnet"]["regularisation"] is None
    assert lines["odenet"]["regularisation"]["kinetic"] > 0
    assert lines["rknet"]["regularisation"]["kinetic"] > 0
