"""Numeric options are checked at parse time: a value out of range stops every command with
exit status 2 and one line naming the option and its valid range, before --out is created;
the argument types behind them accept their whole range and nothing else."""

from __future__ import annotations

import argparse

import pytest

from neuralode import _cli_types as types
from neuralode.cli import _command_named, build_parser, main

POSITIVE_INT = "must be a positive integer"
NON_NEGATIVE_INT = "must be a non-negative integer"
POSITIVE = "must be a positive number"
NON_NEGATIVE = "must be a non-negative number"
FRACTION = "must be a number in [0, 1)"
WIDTHS = "must be comma-separated positive integers (e.g. 64,64,64)"
SEED = "must be an integer in [0, 2**32 - 1]"
OBSERVATIONS = "must be an integer in [1, 100]"
TOLERANCE = "must be a number in (0, 1)"
THREADS = "must be an integer from 0 to 1024"
WARMUP = "must be a number of epochs from 0 to 1e6"

# (command, option, its values, the expected error after "argument OPTION: ")
CASES = [
    (["demo", "--quick"], "--threads", ["-1"], f"{THREADS}, got -1"),
    (["train", "odenet"], "--threads", ["100000"], f"{THREADS}, got 100000"),
    (["experiment", "spirals"], "--threads", ["2000"], f"{THREADS}, got 2000"),
    (["train", "odenet"], "--warmup-epochs", ["1e308"], f"{WARMUP}, got 1e308"),
    (["bench"], "--repeats", ["0"], f"{POSITIVE_INT}, got 0"),
    (["bench"], "--threads", ["-2"], f"{THREADS}, got -2"),
    (["bench"], "--rtols", ["1e-4", "0"], f"{TOLERANCE}, got 0"),
    (["bench"], "--rtols", ["1e-4", "2"], f"{TOLERANCE}, got 2"),
    (["train", "odenet"], "--epochs", ["0"], f"{POSITIVE_INT}, got 0"),
    (["train", "odenet"], "--batch-size", ["8.5"], f"{POSITIVE_INT}, got '8.5'"),
    (["train", "odenet"], "--lr", ["-0.001"], f"{POSITIVE}, got -0.001"),
    (["train", "odenet"], "--rtol", ["0"], f"{TOLERANCE}, got 0"),
    (["train", "odenet"], "--rtol", ["1"], f"{TOLERANCE}, got 1"),
    (["train", "odenet"], "--atol", ["nan"], f"{POSITIVE}, got nan"),
    (["train", "odenet"], "--kinetic", ["-1"], f"{NON_NEGATIVE}, got -1"),
    (["train", "odenet"], "--ema", ["1"], f"{FRACTION}, got 1"),
    (["train", "odenet"], "--label-smoothing", ["-0.1"], f"{FRACTION}, got -0.1"),
    (["train", "odenet"], "--seed", ["-1"], f"{SEED}, got -1"),
    (["train", "odenet"], "--crop-padding", ["-2"], "must be an integer >= -1, got -2"),
    (["train", "odenet"], "--derivative-order", ["1"], "must be an integer >= 2, got 1"),
    (["train", "odenet"], "--train-subset", ["-5"], f"{NON_NEGATIVE_INT}, got -5"),
    (["train", "odenet"], "--sweep-tolerances", ["0.1", "-0.01"], f"{TOLERANCE}, got -0.01"),
    (["train", "odenet"], "--sweep-tolerances", ["0.1", "2"], f"{TOLERANCE}, got 2"),
    (["train", "deq"], "--deq-tol", ["1.5"], f"{TOLERANCE}, got 1.5"),
    (["train", "deq"], "--deq-max-iter", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "table1"], "--memory-batch", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "table1"], "--memory-tolerances", ["0.1", "1"], f"{TOLERANCE}, got 1"),
    (["experiment", "table1"], "--memory-step-sizes", ["0.5", "-0.25"], f"{POSITIVE}, got -0.25"),
    (["experiment", "table1"], "--epochs", ["-3"], f"{POSITIVE_INT}, got -3"),
    (["experiment", "implicit"], "--deq-dropout", ["1.5"], f"{FRACTION}, got 1.5"),
    (["experiment", "implicit"], "--memory-iterations", ["5", "0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "implicit"], "--residual-targets", ["0.01", "0"], f"{POSITIVE}, got 0"),
    (["experiment", "toy2d", "--quick"], "--iters", ["-1"], f"{POSITIVE_INT}, got -1"),
    (["experiment", "toy2d", "--quick"], "--batch", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "toy2d", "--quick"], "--hidden", ["0"], f"{WIDTHS}, got '0'"),
    (["experiment", "toy2d", "--quick"], "--hidden", ["a,b"], f"{WIDTHS}, got 'a,b'"),
    (["experiment", "toy2d", "--quick"], "--hidden", ["16,,16"], f"{WIDTHS}, got '16,,16'"),
    (["experiment", "toy2d", "--quick"], "--T", ["0"], f"{POSITIVE}, got 0"),
    (["experiment", "toy2d", "--quick"], "--eval-tol", ["inf"], f"{TOLERANCE}, got inf"),
    (["experiment", "toy2d", "--quick"], "--tol", ["2"], f"{TOLERANCE}, got 2"),
    (["experiment", "toy2d", "--quick"], "--jacobian", ["-0.01"], f"{NON_NEGATIVE}, got -0.01"),
    (["experiment", "density-matching", "--quick"], "--iters", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "density-matching"], "--sizes", ["1,0"], f"{WIDTHS}, got '1,0'"),
    (["experiment", "density-matching"], "--tol", ["1"], f"{TOLERANCE}, got 1"),
    (["experiment", "spirals", "--quick"], "--obs", ["30", "101"], f"{OBSERVATIONS}, got 101"),
    (["experiment", "spirals", "--quick"], "--spirals", ["2"], "must be an integer >= 3, got 2"),
    (["experiment", "spirals", "--quick"], "--rnn-hide", ["1"], f"{FRACTION}, got 1"),
    (["experiment", "spirals", "--quick"], "--workers", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "cnf-mnist", "--quick"], "--epochs", ["0"], f"{POSITIVE}, got 0"),
    (["experiment", "cnf-mnist", "--quick"], "--hidden", ["4,-4"], f"{WIDTHS}, got '4,-4'"),
    (["experiment", "cnf-mnist", "--quick"], "--steps", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "cnf-mnist", "--quick"], "--tol", ["3"], f"{TOLERANCE}, got 3"),
    (["experiment", "pde"], "--grid", ["4"], "must be an integer >= 5, got 4"),
    (["experiment", "pde"], "--rtol", ["1"], f"{TOLERANCE}, got 1"),
    (["experiment", "pde"], "--viscosity", ["-0.1"], f"{NON_NEGATIVE}, got -0.1"),
    (["experiment", "pde"], "--window-stride", ["0"], f"{POSITIVE_INT}, got 0"),
    (["experiment", "latent-sde"], "--times", ["1"], "must be an integer >= 2, got 1"),
    (["experiment", "latent-sde"], "--dt", ["-0.02"], "must be a number in (0, 1], got -0.02"),
    (["experiment", "latent-sde"], "--dt", ["5"], "must be a number in (0, 1], got 5"),
    (["experiment", "latent-sde"], "--seed", [str(2**32)], f"{SEED}, got {2**32}"),
    (["experiment", "sde-gan"], "--times", ["2"], "must be an integer >= 3, got 2"),
    (["experiment", "sde-gan"], "--generator-lr", ["0"], f"{POSITIVE}, got 0"),
    (["experiment", "sde-gan"], "--lag", ["0"], f"{POSITIVE_INT}, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    "command, option, values, expected",
    CASES,
    ids=[f"{' '.join(c[0][:2])} {c[1]} {' '.join(c[2])}" for c in CASES],
)
def test_an_option_out_of_range_stops_the_parse_before_out_is_created(
    tmp_path, capsys, command, option, values, expected
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main([*command, option, *values, "--out", str(out)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    name = _command_named(command)  # "train", "experiment toy2d", ...
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"neuralode {name}: error: argument {option}: {expected} "), err
    assert not out.exists()


def test_the_ends_of_each_range_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["train", "odenet", "--crop-padding", "-1", "--train-subset", "0", "--ema", "0"]
        + ["--kinetic", "0", "--seed", str(2**32 - 1), "--threads", "0", "--derivative-order", "2"]
        + ["--epochs", "1", "--lr", "1e-12", "--sweep-tolerances", "0.5", "1e-9"]
    )
    assert (args.crop_padding, args.train_subset, args.ema, args.kinetic) == (-1, 0, 0.0, 0.0)
    assert (args.seed, args.threads, args.derivative_order) == (2**32 - 1, 0, 2)
    assert (args.epochs, args.lr, args.sweep_tolerances) == (1, 1e-12, [0.5, 1e-9])
    args = parser.parse_args(["experiment", "spirals", "--obs", "1", "100", "--spirals", "3"])
    assert (args.obs, args.spirals, args.rnn_hide) == ([1, 100], 3, None)  # None: its default
    args = parser.parse_args(["experiment", "toy2d", "--hidden", " 8, 8", "--iters", "1"])
    assert (args.hidden, args.iters, args.batch) == ("8,8", 1, None)  # None: fill_defaults's
    args = parser.parse_args(["experiment", "pde", "--viscosity", "0", "--rtol", "0.5"])
    assert (args.viscosity, args.rtol) == (0.0, 0.5)
    args = parser.parse_args(["bench", "--threads", "0", "--rtols", "1e-3", "1e-6"])
    assert (args.threads, args.rtols) == (0, [1e-3, 1e-6])


def _numeric_options(parser: argparse.ArgumentParser, command: str) -> list[tuple[str, str]]:
    """(command, option) of every option of ``parser`` and its subcommands converted by
    plain ``int`` or ``float`` (no range check)."""
    plain = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                plain += _numeric_options(sub, f"{command} {name}")
        elif action.type in (int, float):
            plain.append((command, action.option_strings[0]))
    return plain


def test_no_numeric_option_goes_unchecked() -> None:
    assert _numeric_options(build_parser(), "neuralode") == []


def _tolerance_options(parser: argparse.ArgumentParser, command: str) -> list[tuple]:
    """(command, option, its type) of every tolerance option of ``parser`` and its
    subcommands: those whose name holds "tol"."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _tolerance_options(sub, f"{command} {name}")
        elif any("tol" in option for option in action.option_strings):
            found.append((command, action.option_strings[0], action.type))
    return found


def test_every_relative_tolerance_is_checked_by_one_type() -> None:
    # a relative tolerance of 1 or more accepts any error; an absolute one (--atol) is on the
    # state's scale, so any positive number is meaningful
    options = _tolerance_options(build_parser(), "neuralode")
    assert len(options) >= 12, options
    for command, option, convert in options:
        expected = types.positive_float if option == "--atol" else types.open_unit
        assert convert is expected, (command, option, convert)


def test_the_benchmark_scripts_check_their_options(capsys) -> None:
    pytest.importorskip("scipy")
    from neuralode.bench import core, gpu

    for run, argv, expected in [
        (core.main, ["--threads", "0"], f"argument --threads: {POSITIVE_INT}, got 0"),
        (gpu.main, ["--batches", "16", "0"], f"argument --batches: {POSITIVE_INT}, got 0"),
        (gpu.main, ["--t1", "-1"], f"argument --t1: {POSITIVE}, got -1"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            run(argv)
        assert stopped.value.code == 2
        assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "convert, text, value",
    [
        (types.positive_int, "1", 1),
        (types.positive_int, " 12 ", 12),
        (types.non_negative_int, "0", 0),
        (types.random_seed, "0", 0),
        (types.random_seed, str(2**32 - 1), 2**32 - 1),
        (types.int_at_least(-1), "-1", -1),
        (types.int_in_range(1, 100), "100", 100),
        (types.positive_float, "1e-300", 1e-300),
        (types.non_negative_float, "0", 0.0),
        (types.non_negative_float, "-0.0", 0.0),
        (types.fraction, "0", 0.0),
        (types.fraction, "0.999", 0.999),
        (types.open_unit, "1e-9", 1e-9),
        (types.positive_float_at_most(1.0), "1", 1.0),
        (types.widths, "64,64,64", "64,64,64"),
        (types.widths, " 4 , 2", "4,2"),
        (types.widths, "7", "7"),
    ],
)
def test_a_type_returns_the_value_in_range(convert, text, value) -> None:
    result = convert(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    "convert, text, message",
    [
        (types.positive_int, "0", "must be a positive integer, got 0"),
        (types.positive_int, "-3", "must be a positive integer, got -3"),
        (types.positive_int, "2.0", "must be a positive integer, got '2.0'"),
        (types.positive_int, "", "must be a positive integer, got ''"),
        (types.non_negative_int, "-1", "must be a non-negative integer, got -1"),
        (types.random_seed, "-1", "must be an integer in [0, 2**32 - 1], got -1"),
        (types.random_seed, str(2**32), f"must be an integer in [0, 2**32 - 1], got {2**32}"),
        (types.int_at_least(3), "2", "must be an integer >= 3, got 2"),
        (types.int_in_range(1, 100), "0", "must be an integer in [1, 100], got 0"),
        (types.int_in_range(1, 100), "101", "must be an integer in [1, 100], got 101"),
        (types.positive_float, "0", "must be a positive number, got 0"),
        (types.positive_float, "inf", "must be a positive number, got inf"),
        (types.positive_float, "nan", "must be a positive number, got nan"),
        (types.positive_float, "fast", "must be a positive number, got 'fast'"),
        (types.non_negative_float, "-1e-9", "must be a non-negative number, got -1e-9"),
        (types.fraction, "1", "must be a number in [0, 1), got 1"),
        (types.fraction, "-0.5", "must be a number in [0, 1), got -0.5"),
        (types.open_unit, "0", "must be a number in (0, 1), got 0"),
        (types.open_unit, "1", "must be a number in (0, 1), got 1"),
        (types.positive_float_at_most(1.0), "0", "must be a number in (0, 1], got 0"),
        (types.positive_float_at_most(1.0), "1.5", "must be a number in (0, 1], got 1.5"),
        (types.widths, "0", f"{WIDTHS}, got '0'"),
        (types.widths, "64,", f"{WIDTHS}, got '64,'"),
        (types.widths, "", f"{WIDTHS}, got ''"),
        (types.widths, "8,x", f"{WIDTHS}, got '8,x'"),
    ],
)
def test_a_type_refuses_a_value_out_of_range(convert, text, message) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        convert(text)
    assert str(refused.value) == message


def test_the_seed_range_is_numpys() -> None:
    np = pytest.importorskip("numpy")
    np.random.seed(types.SEED_LIMIT)
    with pytest.raises(ValueError):
        np.random.seed(types.SEED_LIMIT + 1)
    with pytest.raises(ValueError):
        np.random.seed(-1)


@pytest.mark.parametrize("command", [["train", "odenet"], ["experiment", "toy2d", "--quick"]])
def test_an_unknown_method_stops_the_parse_and_an_overwrite_keeps_the_earlier_run(
    tmp_path, capsys, command
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an earlier run, which --overwrite would remove
    with pytest.raises(SystemExit) as stop:
        main([*command, "--method", "rk45", "--overwrite", "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --method: unknown method 'rk45'; available:" in err
    assert "dopri5" in err and (out / "config.json").read_text() == "{}"
    assert types.method_name("tsit5") == "tsit5"


@pytest.mark.parametrize(
    "field, value", [("rtol", 1.0), ("deq_tol", 2.0), ("sweep_tolerances", [0.1, 1.5])]
)
def test_train_config_refuses_a_relative_tolerance_of_one_or_more(field, value) -> None:
    from neuralode.training import TrainConfig

    with pytest.raises(ValueError, match=rf"{field} .*in \(0, 1\), got"):
        TrainConfig(**{field: value})


def test_a_leading_tilde_of_a_path_option_is_the_home_directory(
    tmp_path, capsys, monkeypatch
) -> None:
    # "--data-dir=~/x" reaches the program unexpanded (the shell expands ~ only at a word's
    # start); a directory named "~" in the current one is never what was meant
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    argv = ["train", "odenet", "--data", "mnist", "--data-dir=~/nodata", "--out=~/run"]
    assert main(argv) == 2
    assert f"{home / 'nodata'}: missing train-images" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []
    args = build_parser().parse_args(["bench", "--out", "~/b", "--diffrax-python", "~/py"])
    assert (args.out, args.diffrax_python) == ("~/b", "~/py")  # main expands them
