"""The command line: the demo writes its table, JSON and plots under the run-directory rules;
bad usage errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from neuralode.cli import main
from neuralode.training.rundir import RunLock


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


def test_demo_refuses_a_run_a_locked_directory_or_a_file_unless_overwrite(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "train-run"  # a neuralode train run
    run.mkdir()
    for name in ("config.json", "metrics.jsonl", "trajectories.png"):
        (run / name).write_text("the train run")
    (run / "notes.txt").write_text("mine")

    def refused(out, *fragments: str) -> None:
        assert main(["demo", "--quick", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("neuralode demo: error:"), err
        for fragment in fragments:
            assert fragment in err, err

    refused(run, "holds an earlier run", "--overwrite")
    assert (run / "trajectories.png").read_text() == "the train run"
    lock = RunLock(run).acquire()  # a run in progress
    try:
        refused(run, "in use by another")
    finally:
        lock.release()
    (tmp_path / "afile").write_text("keep me")
    refused(tmp_path / "afile", "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "keep me"
    assert main(["demo", "--quick", "--out", str(run), "--overwrite"]) == 0
    assert sorted(p.name for p in run.iterdir()) == [
        "demo.json", "notes.txt", "trajectories.png", "work_precision.png"
    ]  # fmt: skip
    refused(run, "holds an earlier run (demo.json)")  # the demo's own run too


def test_module_help_and_unknown_command(monkeypatch, capsys) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "neuralode", "--help"], capture_output=True, text=True
    )  # a fresh interpreter: the package's __main__ and imports as a user meets them
    assert ok.returncode == 0 and "demo" in ok.stdout and "train" in ok.stdout
    assert "experiment" in ok.stdout
    import runpy  # the same __main__ in this process (no second interpreter's imports)

    monkeypatch.setattr(sys, "argv", ["neuralode", "fly"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("neuralode", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_worker_processes_print_warnings_as_one_line(capsys) -> None:
    """A worker started with ``follow_stop(flag, command)`` (spirals --workers) prints its
    warnings as the command line does, not in Python's two-line format."""
    import warnings

    from neuralode.training.runtime import follow_stop

    with warnings.catch_warnings():  # restores showwarning
        warnings.simplefilter("always")
        follow_stop(None, "experiment spirals")
        warnings.warn("the step size\n fell", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "neuralode experiment spirals: warning: the step size fell\n"


def test_version(capsys) -> None:
    import torch

    import neuralode

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"neuralode {neuralode.__version__} (torch {torch.__version__}")
    assert neuralode.__version__ != "0+unknown"  # the tests run on the installed package


def test_demo_and_plotting_experiments_refuse_a_missing_matplotlib_before_any_work(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    for command in (
        ["demo", "--quick"],
        ["experiment", "toy2d", "--quick"],
        ["experiment", "cde"],
        ["experiment", "latent-sde"],
        ["experiment", "sde-gan"],
    ):
        out = tmp_path / "-".join(command)
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "the plots need matplotlib" in err and "pip install 'neuralode[plots]'" in err
        assert not out.exists()


def test_bench_refuses_an_out_that_is_a_file_as_bad_input(tmp_path, capsys) -> None:
    target = tmp_path / "report"
    target.write_text("keep me")
    assert main(["bench", "--parts", "gpu", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"neuralode bench: error: --out {target} is a file, not a directory; choose a directory"
    ]
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "device, fragment",
    [
        ("banana", "--device 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
        ("cuda", "--device cuda: CUDA is not available on this machine; use --device cpu"),
    ],
)
def test_cnf_mnist_refuses_a_device_it_cannot_use_as_bad_input(
    tmp_path, capsys, monkeypatch, device, fragment
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    argv = ["experiment", "cnf-mnist", "--quick", "--device", device, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"neuralode experiment cnf-mnist: error: {fragment}"]
    assert not out.exists()


def test_train_names_the_files_it_wrote(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    argv = ["train", "resnet", "--data", "digits", "--train-subset", "16", "--test-subset", "8"]
    argv += ["--channels", "4", "--batch-size", "16", "--epochs", "1", "--threads", "1"]
    assert main([*argv, "--no-plots", "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.strip().endswith("/{metrics.jsonl,checkpoint.pt}")
    assert not list((tmp_path / "a").glob("*.png"))
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip().endswith("/{metrics.jsonl,checkpoint.pt,*.png}")
    assert list((tmp_path / "b").glob("*.png"))


def test_train_warns_once_about_options_its_model_never_reads(tmp_path, capsys) -> None:
    pytest.importorskip("sklearn")
    from neuralode.training import TrainConfig
    from neuralode.training.config import ignored_options

    argv = ["train", "resnet", "--data", "digits", "--train-subset", "16", "--test-subset", "8"]
    argv += ["--channels", "4", "--batch-size", "16", "--epochs", "1", "--threads", "1"]
    argv += ["--no-plots", "--method", "rk4", "--deq-tol", "0.1", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [
        "neuralode train: warning: resnet on digits ignores --method (read only by odenet), "
        "--deq-tol (read only by deq)"
    ]
    assert ignored_options(TrainConfig(model="odenet", blocks=2, step_size=0.1, momentum=0.5)) == [
        "--blocks (read only by resnet)",
        "--step-size (the adaptive dopri5 chooses its steps)",
        "--momentum (read only by --optimizer sgd, not adamw)",
    ]
    assert ignored_options(TrainConfig(model="resnet", step_size=0.1, data_dir="d")) == [
        "--step-size (read only by rknet and odenet)",
        "--data-dir (read only with --data mnist)",
    ]
    # the options a run reads, and defaults given again, are not named
    used = dict(method="rk4", step_size=0.1, optimizer="sgd", momentum=0.5, data="mnist")
    assert ignored_options(TrainConfig(model="odenet", data_dir="d", **used)) == []
    assert ignored_options(TrainConfig(model="rknet", step_size=0.1)) == []
    assert ignored_options(TrainConfig(model="deq", blocks=6, deq_tol=0.1)) == []


def test_cnf_mnist_downloads_mnist_as_its_error_advises(tmp_path, capsys, monkeypatch) -> None:
    from neuralode.data import datasets

    out = tmp_path / "run"
    argv = ["experiment", "cnf-mnist", "--quick", "--data", "mnist", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--data mnist needs --data-dir DIR with the MNIST IDX files, or --download" in err
    asked = []

    def download(cache_dir):
        asked.append(cache_dir)
        raise datasets.DatasetNotFoundError("no mirror reachable")

    monkeypatch.setattr(datasets, "download_mnist", download)
    cache = str(tmp_path / "cache")
    assert main([*argv, "--download", "--cache-dir", cache]) == 2
    assert "no mirror reachable" in capsys.readouterr().err and asked == [cache]
    assert not out.exists()


@pytest.mark.parametrize("fault", [KeyboardInterrupt, RuntimeError])
def test_an_unfinished_demo_leaves_nothing_that_refuses_a_rerun(
    tmp_path, capsys, monkeypatch, fault
) -> None:
    from neuralode.experiments import demo
    from neuralode.training.rundir import open_run_directory

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def stopped(directory, quick=False):
        (directory / "demo.json").write_text("[]")  # the table, then Ctrl-C before the plots
        raise fault("stopped")

    monkeypatch.setattr(demo, "run_demo", stopped)
    status = 130 if fault is KeyboardInterrupt else 1
    assert main(["demo", "--quick", "--out", str(out)]) == status
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    open_run_directory(out, resume=False, overwrite=False, resumable=False).release()  # a rerun


# What pip writes as the console script of an entry ``module:function``, run with an import
# hook that raises KeyboardInterrupt when torch is first imported: a Ctrl-C as neuralode loads.
CONSOLE_SCRIPT = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt

sys.meta_path.insert(0, CtrlC())
from {module} import {function}
sys.exit({function}())
"""


def _console_entry() -> tuple[str, str]:
    """The module and function of the ``neuralode`` console script in pyproject.toml."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    # (tomllib is Python 3.11's; the [project.scripts] line is found as text)
    entry = re.search(r'^neuralode = "([^"]+)"$', pyproject.read_text(), re.MULTILINE)
    assert entry is not None, "no neuralode console script in pyproject.toml"
    module, function = entry.group(1).split(":")
    return module, function


@pytest.mark.parametrize(
    "argv, command", [(["train", "--help"], "train"), (["experiment", "toy2d"], "experiment toy2d")]
)
def test_ctrl_c_while_the_console_script_imports_prints_one_line(argv, command) -> None:
    module, function = _console_entry()
    script = CONSOLE_SCRIPT.format(module=module, function=function)
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == f"neuralode {command}: error: interrupted\n"
    assert done.stdout == ""


@pytest.mark.parametrize(
    "argv", [[], ["--version"], ["train", "odenet"], ["experiment", "--quick", "toy2d", "-h"]]
)
def test_the_console_script_names_the_command_as_the_cli_does(argv) -> None:
    import _neuralode_cli
    from neuralode.cli import _command_named

    assert _neuralode_cli._command_named(argv) == _command_named(argv)
