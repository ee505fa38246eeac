"""The command line's options: --quick keeps the options given, --help shows the defaults the
code uses, --threads applies before any work, warnings and refused --resume runs print one
line."""

from __future__ import annotations

import argparse
import importlib
import json
import warnings

import pytest
import torch

from neuralode.cli import EXPERIMENTS, build_parser, main
from neuralode.training import TrainConfig


class _Stop(ValueError):
    """Raised by a patched step to end a command before it trains (main returns 2)."""


def _options_at_open(monkeypatch, module_name: str, argv: list[str]) -> argparse.Namespace:
    """The options of ``neuralode experiment ...`` as the run directory is opened (the run
    stops there)."""
    module = importlib.import_module(module_name)
    seen = []

    def stop(args, *rest, **kwargs):
        seen.append(args)
        raise _Stop("stop")

    monkeypatch.setattr(module, "open_experiment", stop)
    assert main(argv) == 2
    return seen[0]


def test_quick_keeps_the_options_given(monkeypatch, capsys) -> None:
    argv = ["experiment", "toy2d", "--quick", "--threads", "0", "--iters", "60", "--batch", "7"]
    args = _options_at_open(monkeypatch, "neuralode.experiments.toy2d", argv)
    assert (args.iters, args.batch) == (60, 7)
    assert (args.hidden, args.n_test, args.tol, args.eval_tol) == ("16,16", 500, 1e-3, 1e-4)
    argv = ["experiment", "toy2d", "--threads", "0", "--hidden", "8", "--n-test", "9"]
    args = _options_at_open(monkeypatch, "neuralode.experiments.toy2d", argv)
    assert (args.iters, args.batch, args.hidden, args.n_test) == (1500, 512, "8", 9)

    argv = ["experiment", "density-matching", "--quick", "--threads", "0", "--targets", "U2"]
    argv += ["--sizes", "4", "--batch", "5"]
    args = _options_at_open(monkeypatch, "neuralode.experiments.density_matching", argv)
    assert (args.targets, args.sizes, args.iters, args.batch) == ("U2", "4", 3, 5)
    argv = ["experiment", "density-matching", "--threads", "0", "--iters", "2"]
    args = _options_at_open(monkeypatch, "neuralode.experiments.density_matching", argv)
    assert (args.targets, args.sizes, args.iters, args.batch) == ("U1,U2,U3,U4", "1,8,32", 2, 256)

    argv = ["experiment", "cnf-mnist", "--quick", "--batch", "3", "--hidden", "2,2"]
    args = _options_at_open(monkeypatch, "neuralode.experiments.cnf_mnist", argv)
    assert (args.batch, args.hidden, args.blocks) == (3, "2,2", 1)
    assert (args.tol, args.device) == (1e-2, "cpu")


@pytest.fixture
def wide(monkeypatch) -> None:
    """Help lines as long as they come (argparse wraps at the terminal's width)."""
    monkeypatch.setenv("COLUMNS", "1000")


def _help(*command: str) -> str:
    """The help of ``neuralode COMMAND...``, whitespace collapsed."""
    parser = build_parser()
    for name in command:
        parser = next(
            action.choices[name]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        )
    return " ".join(parser.format_help().split())


def test_help_shows_the_defaults_the_code_uses(wide) -> None:
    assert "output directory (default out/table1)" in _help("experiment", "table1")
    assert "output directory (default out/implicit)" in _help("experiment", "implicit")
    assert "output directory (default out/train-MODEL)" in _help("train")
    implicit = _help("experiment", "implicit")
    assert "residual blocks of resnet (default 1)" in implicit  # the experiment's recipe
    toy2d = _help("experiment", "toy2d")
    assert "training steps (default 1500; 5 with --quick)" in toy2d
    assert "output directory (default out/toy2d)" in toy2d
    density = _help("experiment", "density-matching")
    assert "(default U1,U2,U3,U4; U1 with --quick)" in density
    assert "(default 1,8,32; 1,2 with --quick)" in density
    assert "series per step (default 128)" in _help("experiment", "sde-gan")
    assert "optimiser steps (default 1000)" in _help("experiment", "latent-sde")
    for name in EXPERIMENTS:
        assert "output directory (default out/" in _help("experiment", name), name


def test_experiment_descriptions_are_whole_sentences(wide) -> None:
    listing = _help("experiment")
    for module_name in EXPERIMENTS.values():
        first = importlib.import_module(module_name).__doc__.strip().splitlines()[0]
        assert first.endswith("."), module_name
        assert " ".join(first.split()) in listing
    assert "on an Ornstein-Uhlenbeck process." in listing


def test_threads_apply_before_the_work(monkeypatch, tmp_path) -> None:
    from neuralode.experiments import cnf_mnist, demo

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)

    def no_data(args):
        assert calls == [1]  # before the data are read
        raise _Stop("stop")

    monkeypatch.setattr(cnf_mnist, "_split", no_data)
    assert main(["experiment", "cnf-mnist", "--quick", "--threads", "1"]) == 2

    def no_demo(out, quick=False):
        assert calls == [1, 2]
        return []

    monkeypatch.setattr(demo, "run_demo", no_demo)
    monkeypatch.setattr(demo, "format_table", lambda rows: "")
    assert main(["demo", "--threads", "2", "--out", str(tmp_path / "demo")]) == 0
    assert calls == [1, 2]


def test_warnings_print_one_line_each(monkeypatch, capsys) -> None:
    from neuralode import cli

    shown = warnings.showwarning

    def warn(args):
        warnings.warn("rtol=1e-12 is below\nwhat float32 resolves", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_demo", warn)
    assert main(["demo"]) == 0
    err = capsys.readouterr().err
    assert err == "neuralode demo: warning: rtol=1e-12 is below what float32 resolves\n"
    assert warnings.showwarning is shown  # restored after the command


def test_resume_of_another_kind_of_run_says_so(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(TrainConfig(out=str(out)).as_dict()))
    argv = ["experiment", "toy2d", "--resume", "--threads", "0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300
    assert "holds a `neuralode train` run, not a `neuralode experiment toy2d` run" in err
    # an experiment's run of another experiment
    config = {"command": "experiment", "experiment": "spirals", "out": str(out)}
    (out / "config.json").write_text(json.dumps(config))
    assert main(argv) == 2
    assert "holds a `neuralode experiment spirals` run, not" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_resume_with_a_corrupt_config_names_the_file(tmp_path, capsys, text) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(text)
    argv = ["experiment", "toy2d", "--resume", "--threads", "0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(out / "config.json") in err and "--overwrite" in err
    if text == "{":
        assert "is not valid JSON" in err


def test_resume_where_no_directory_exists_names_the_experiments_run(tmp_path, capsys) -> None:
    out = tmp_path / "missing"
    assert main(["experiment", "toy2d", "--quick", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"neuralode experiment toy2d: error: --resume: no experiment run in {out} (the "
        "directory does not exist); start without --resume or point --out at the run to "
        "continue\n"
    )
    assert not out.exists()
