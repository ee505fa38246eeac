"""`neuralode train deq` and `neuralode experiment implicit` on a tiny budget."""

from __future__ import annotations

import json

import pytest

from neuralode.cli import main

pytest.importorskip("sklearn", reason="the tiny runs use scikit-learn's digits")
# a few iterations on an untrained layer do not reach the tolerance: the runs say so, as they
# should, and the tests do not need to see it
pytestmark = pytest.mark.filterwarnings("ignore::neuralode.models.ConvergenceWarning")

TINY = ["--data", "digits", "--train-subset", "32", "--test-subset", "16", "--epochs", "1"]
TINY += ["--channels", "8", "--batch-size", "16", "--threads", "1"]


def test_train_deq_reports_iterations_and_plots_residuals(tmp_path) -> None:
    argv = ["train", "deq", *TINY, "--deq-max-iter", "8", "--jacobian", "0.1"]
    argv += ["--deq-dropout", "0.1"]
    argv += ["--sweep-images", "8", "--out", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert 1 <= record["nfe_forward"] <= 8 and 1 <= record["nfe_backward"] <= 8
    assert record["regularisation"]["jacobian"] > 0
    histories = json.loads((tmp_path / "residuals.json").read_text())
    assert set(histories) == {"picard", "anderson", "broyden"}
    assert all(len(h) == 60 for h in histories.values())
    assert (tmp_path / "residuals.png").stat().st_size > 0


def test_deq_refuses_the_ode_regularisers(tmp_path, capsys) -> None:
    assert main(["train", "deq", *TINY, "--kinetic", "0.1", "--out", str(tmp_path)]) == 2
    assert "a deq is regularised by --jacobian" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # refused by the option's type, as it parses
        main(["train", "deq", *TINY, "--deq-dropout", "1", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "argument --deq-dropout: must be a number in [0, 1), got 1" in capsys.readouterr().err


def test_implicit_experiment_tiny_budget(tmp_path, capsys) -> None:
    argv = ["experiment", "implicit", *TINY, "--memory-batch", "4", "--out", str(tmp_path)]
    argv += ["--memory-iterations", "2", "8", "--residual-iterations", "12"]
    argv += ["--residual-images", "8", "--kinetic", "0.01", "--deq-epochs", "2"]
    assert main(argv) == 0
    table = (tmp_path / "table.md").read_text()
    assert table == capsys.readouterr().out.strip() + "\n"
    for text in ("| DEQ |", "| ODE-Net |", "| ResNet |", "ResNet with 1 block(s)"):
        assert text in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("deq", "odenet", "resnet"):
        assert 0 <= metrics[name]["test_error"] <= 1
    assert metrics["deq"]["epochs"] == 2 and metrics["odenet"]["epochs"] == 1
    # comparable sizes: the same downsampling and head, one block's worth of convolutions
    params = [metrics[name]["params"] for name in ("deq", "odenet", "resnet")]
    assert max(params) < 1.2 * min(params)
    memory = {(r["gradient"], r["iterations"]): r["memory_mb"] for r in metrics["memory_study"]}
    assert memory[("implicit", 2)] == memory[("implicit", 8)]
    assert memory[("unrolled", 8)] > 1.2 * memory[("unrolled", 2)]  # the features are shared
    residuals = metrics["residual_study"]
    assert set(residuals["histories"]) == {"picard", "anderson", "broyden"}
    for method, row in residuals["iterations_to_residual"].items():
        assert set(row) == {"0.01", "0.001", "0.0001"}
        history = residuals["histories"][method]
        for target, cell in row.items():
            # the batch count is where the history first reaches the target
            reached = [k for k, r in enumerate(history, 1) if r <= float(target)]
            assert cell["batch"] == (reached[0] if reached else None)
            if cell["sample_mean"] is not None:
                assert 1 <= cell["sample_mean"] <= cell["batch"]
    assert "Anderson's saving over plain iteration" in table
    for name in ("table.md", "metrics.json", "memory.png", "residuals.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_implicit_experiment_refuses_an_earlier_run_in_one_line(tmp_path, capsys) -> None:
    argv = ["experiment", "implicit", *TINY, "--models", "resnet", "--no-plots"]
    argv += ["--memory-batch", "4", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    (err,) = capsys.readouterr().err.strip().split("\n")  # before any model's header
    assert err == (
        f"neuralode experiment implicit: error: --out {tmp_path} holds an earlier run of "
        "ResNet (resnet); continue it with --resume, replace it with --overwrite, or choose "
        "another --out"
    )
    assert main([*argv, "--overwrite"]) == 0
    # --resume of the complete run: every file is left as it is, the table printed again
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*.*")}
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*.*")} == before
    captured = capsys.readouterr()
    assert captured.out == (tmp_path / "table.md").read_text()
    assert "already complete; its files are left as they are" in captured.err


def test_implicit_experiment_runs_in_one_out_merge_their_rows(tmp_path, capsys) -> None:
    argv = ["experiment", "implicit", *TINY, "--no-plots", "--memory-batch", "4"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--models", "resnet"]) == 0
    assert main([*argv, "--models", "odenet"]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| ResNet |" in table and "| ODE-Net |" in table
    assert "ResNet: from an earlier run in this directory with the same options." in table
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"resnet", "odenet"} <= set(metrics) and "deq" not in metrics
    capsys.readouterr()
    # a table of other options is not mixed with this one
    assert main([*argv, "--models", "deq", "--deq-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds an implicit-layers table made with other options" in err
    assert "--deq-epochs was 24, now 1" in err


def test_implicit_experiment_refuses_a_file_as_out(tmp_path, capsys) -> None:
    path = tmp_path / "file"
    path.write_text("mine")
    assert main(["experiment", "implicit", *TINY, "--out", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory; choose a directory" in err
    assert path.read_text() == "mine"


def test_data_that_cannot_load_fails_before_any_training(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "run"
    argv = ["experiment", "implicit", *TINY, "--data", "mnist", "--data-dir"]
    assert main([*argv, str(tmp_path / "file"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file, not a directory" in err  # no heading first
    assert not out.exists()
