"""The Table 1 experiment on a tiny budget: the table, its paper columns, and memory that
stays flat for the adjoint ODE-Net while RK-Net's grows with its number of steps."""

from __future__ import annotations

import json
import shutil

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


def test_table1_runs_in_one_out_merge_their_rows(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    argv = ["experiment", "table1", "--data", "digits", "--train-subset", "32", "--test-subset"]
    argv += ["16", "--epochs", "1", "--channels", "8", "--batch-size", "16", "--threads", "1"]
    argv += ["--no-plots", "--memory-batch", "4", "--memory-step-sizes", "0.5", "--out", str(out)]

    def models() -> list[str]:
        return [r["model"] for r in json.loads((out / "table1.json").read_text())["rows"]]

    assert main([*argv, "--models", "resnet"]) == 0
    assert main([*argv, "--models", "rknet"]) == 0
    assert models() == ["resnet", "rknet"]
    table = (out / "table1.md").read_text()
    assert "| ResNet |" in table and "| RK-Net |" in table
    assert "ResNet: from an earlier run in this directory with the same options" in table
    resnet = json.loads((out / "table1.json").read_text())["rows"][0]
    # other options are refused before any training; --overwrite then starts a new table
    assert main([*argv, "--models", "odenet", "--seed", "1"]) == 2
    assert "made with other options (--seed was 0, now 1)" in capsys.readouterr().err
    assert not (out / "odenet").exists()
    # rerunning a model replaces its row only
    assert main([*argv, "--models", "rknet", "--overwrite"]) == 0
    saved = json.loads((out / "table1.json").read_text())
    assert models() == ["resnet", "rknet"] and saved["rows"][0] == resnet
    assert [r["model"] for r in saved["memory"]] == ["rknet"]
    assert main([*argv, "--models", "rknet", "--overwrite", "--seed", "1"]) == 0
    assert models() == ["rknet"]
    # a file as --out: one line, exit status 2
    capsys.readouterr()
    (tmp_path / "afile").write_text("keep me")
    assert main([*argv[:-2], "--models", "resnet", "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a directory" in err


def test_table1_resume_of_a_complete_run_changes_no_file(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    argv = ["experiment", "table1", "--data", "digits", "--train-subset", "32", "--test-subset"]
    argv += ["16", "--epochs", "1", "--channels", "8", "--batch-size", "16", "--threads", "1"]
    argv += ["--no-plots", "--memory-batch", "4", "--memory-step-sizes", "0.5", "--out", str(out)]
    argv += ["--models", "resnet"]

    def files() -> dict[str, tuple[bytes, int]]:
        return {
            str(path.relative_to(out)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(out.rglob("*"))
            if path.is_file()
        }

    assert main(argv) == 0
    before = files()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert files() == before
    captured = capsys.readouterr()
    assert captured.out == (out / "table1.md").read_text()
    assert f"the run in {out} is already complete; its files are left as they are" in captured.err


def test_table1_resume_starts_the_models_a_stopped_run_had_not_begun(tmp_path, capsys) -> None:
    """A run stopped while training its first model has no directory (or, killed before its
    first checkpoint, no checkpoint) for the others: ``--resume`` starts those afresh."""
    out = tmp_path / "t"
    argv = ["experiment", "table1", "--data", "digits", "--train-subset", "32", "--test-subset"]
    argv += ["16", "--epochs", "1", "--channels", "8", "--batch-size", "16", "--threads", "1"]
    argv += ["--no-plots", "--memory-batch", "4", "--memory-step-sizes", "0.5", "--out", str(out)]
    argv += ["--models", "resnet", "rknet"]
    assert main(argv) == 0
    finished = json.loads((out / "table1.json").read_text())["rows"]
    for begun in (False, True):
        config = (out / "rknet" / "config.json").read_text()
        shutil.rmtree(out / "rknet")
        if begun:  # killed before its first checkpoint: its config.json and no more
            (out / "rknet").mkdir()
            (out / "rknet" / "config.json").write_text(config)
        assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
        assert (out / "rknet" / "checkpoint.pt").is_file()
        rows = json.loads((out / "table1.json").read_text())["rows"]
        assert [r["model"] for r in rows] == ["resnet", "rknet"]
        assert rows[1]["test_error"] == finished[1]["test_error"]  # the same seeded training
