"""``neuralode train`` never loses a run: --out refusal, the run lock, metrics.jsonl kept
consistent with the checkpoint, label validation, optimiser changes on --resume, a full disk,
and one-line CLI errors."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from script_runs import preloaded_context

from neuralode.cli import main
from neuralode.data import write_idx
from neuralode.training import CheckpointError, TrainConfig, TrainingDiverged, rundir, train
from neuralode.training import state as state_module
from neuralode.training.rundir import LOCK_NAME, RunDirectoryError, RunLock

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")

TINY = dict(
    data="digits", channels=8, train_subset=32, test_subset=16, batch_size=16,
    test_batch_size=16, threads=1, plots=False, crop_padding=0,
)  # fmt: skip
ARGV = ["--data", "digits", "--train-subset", "32", "--test-subset", "16", "--channels", "8"]
ARGV += [
    "--batch-size",
    "16",
    "--threads",
    "1",
    "--no-plots",
    "--epochs",
    "1",
    "--crop-padding",
    "0",
]


def row(*ids: str):
    """Names the rows of the guide's bad-input table that a test covers (see
    ``tests/test_bad_input.py``)."""
    return lambda test: test


def _snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("neuralode "), errors[0]  # (not after a progress bar)
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@row("T1", "T2")
def test_existing_out_is_refused_untouched_unless_resume_or_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(TrainConfig(model="resnet", epochs=1, out=str(out), **TINY))
    before = _snapshot(out)
    assert main(["train", "resnet", *ARGV, "--out", str(out)]) == 2
    _one_line_error(capsys, "holds an earlier run", "--resume", "--overwrite")
    assert _snapshot(out) == before
    assert main(["train", "resnet", *ARGV, "--out", str(out), "--resume", "--overwrite"]) == 2
    _one_line_error(capsys, "contradict")
    assert _snapshot(out) == before
    missing = tmp_path / "missing"
    assert main(["train", "resnet", *ARGV, "--out", str(missing), "--resume"]) == 2
    _one_line_error(capsys, "no checkpoint at")
    assert not missing.exists()
    for command in (["train", "resnet", *ARGV], ["experiment", "spirals"]):
        assert main([*command, "--out", str(missing), "--resume", "--overwrite"]) == 2
        _one_line_error(capsys, "contradict")  # (before saying the run is missing)
        assert not missing.exists()
    assert main(["train", "resnet", *ARGV, "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["config"]["seed"] == 1 and saved["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / LOCK_NAME).exists()  # released


def test_a_run_killed_before_its_first_checkpoint_points_resume_at_overwrite(tmp_path, capsys):
    """A run killed before its first checkpoint leaves config.json and metrics.jsonl: a plain
    rerun is refused (they mark a run), so --resume names --overwrite rather than sending
    the user back to the plain rerun."""
    out = tmp_path / "killed"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    assert main(["train", "resnet", *ARGV, "--out", str(out), "--resume"]) == 2
    _one_line_error(
        capsys, "no checkpoint at", "stopped before its first checkpoint", "--overwrite"
    )


def test_resume_repairs_a_metrics_file_that_is_not_text(tmp_path, capsys):
    """metrics.jsonl garbled into bytes that are not UTF-8 is rebuilt from the checkpoint's
    history on --resume, as a garbled text file is (it stopped the resume with a bare
    "'utf-8' codec can't decode" naming no file)."""
    out = tmp_path / "run"
    assert main(["train", "resnet", *ARGV, "--out", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_bytes(bytes(range(128, 256)) * 4)
    assert main(["train", "resnet", *ARGV, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    resumed = (out / "metrics.jsonl").read_text().splitlines()
    assert len(resumed) == 2 and resumed[0] == lines[0]


@row("T3", "T4")
def test_a_locked_run_directory_is_refused_and_a_killed_owner_does_not_block(
    tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    lock = RunLock(out).acquire()  # another run in progress (a second open file: flock conflicts)
    try:
        assert main(["train", "resnet", *ARGV, "--out", str(out)]) == 2
        _one_line_error(capsys, "in use by another neuralode train", f"process {os.getpid()}")
    finally:
        lock.release()
    assert list(out.iterdir()) == []
    # a run killed while holding the lock leaves the file; the lock itself dies with it
    holder = (
        "import sys, time; from pathlib import Path; from neuralode.training.rundir import RunLock;"
        "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=f"process {process.pid}"):
            RunLock(out).acquire()
    finally:
        process.kill()
        process.wait()
    assert (out / LOCK_NAME).read_text().strip() == str(process.pid)  # stale file left behind
    assert main(["train", "resnet", *ARGV, "--out", str(out)]) == 0


@row("T5")
def test_resume_drops_metrics_lines_past_the_checkpoint(tmp_path, capsys) -> None:
    common = dict(model="resnet", schedule="constant", warmup_epochs=0.0, **TINY)
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, out=str(out), **common))
    metrics = out / "metrics.jsonl"
    first = metrics.read_text()
    # an epoch-2 line whose checkpoint failed (a write order with the line first leaves one)
    metrics.write_text(first + first.replace('"epoch": 1', '"epoch": 2'))
    resumed = train(TrainConfig(epochs=2, out=str(out), resume=True, **common))
    assert "dropped 1 line(s) past the checkpoint" in capsys.readouterr().err
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert lines[1]["train_loss"] == resumed.history[1]["train_loss"]


@row("T5", "T8")
def test_failed_checkpoint_write_keeps_the_last_good_one_and_no_metrics_line_past_it(
    tmp_path, monkeypatch, capsys
) -> None:
    common = dict(model="resnet", schedule="constant", warmup_epochs=0.0, **TINY)
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def disk_fills(obj, path):  # the second save fills the disk half-way through
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 partial")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                "PytorchStreamWriter failed writing file data/0: file write failed"
            )
        real_save(obj, path)

    monkeypatch.setattr(state_module.torch, "save", disk_fills)
    with pytest.raises(CheckpointError, match="the disk is full.*last good checkpoint .* kept"):
        train(TrainConfig(epochs=3, out=str(out), **common))
    monkeypatch.setattr(state_module.torch, "save", real_save)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    train(TrainConfig(epochs=3, out=str(out), resume=True, **common))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    # through the CLI: one line that says the disk is full
    calls.clear()
    monkeypatch.setattr(state_module.torch, "save", disk_fills)
    argv = ["train", "resnet", *ARGV, "--epochs", "2", "--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    _one_line_error(capsys, "the disk is full", "last good checkpoint")


def _write_mnist(directory, bad_label: int | None) -> None:
    directory.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 8), ("t10k", 4)):
        labels = np.arange(n, dtype=np.uint8) % 10
        if bad_label is not None and prefix == "train":
            labels[3] = bad_label
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


@row("T6")
def test_bad_labels_are_refused_at_load_before_any_file_changes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(TrainConfig(model="resnet", epochs=1, out=str(out), **TINY))
    before = _snapshot(out)
    _write_mnist(tmp_path / "mnist", bad_label=11)
    argv = ["train", "resnet", "--data", "mnist", "--data-dir", str(tmp_path / "mnist")]
    assert main([*argv, "--out", str(out), "--overwrite", "--epochs", "1", "--no-plots"]) == 2
    _one_line_error(capsys, "label 11 at index 3 is not a class 0-9")
    assert _snapshot(out) == before


@row("T7")
def test_resume_applies_and_records_changed_optimiser_settings(tmp_path, capsys) -> None:
    common = dict(model="resnet", schedule="constant", warmup_epochs=0.0, optimizer="sgd", **TINY)
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, lr=1e-2, out=str(out), **common))
    capsys.readouterr()
    resumed = train(
        TrainConfig(epochs=2, lr=1e-3, momentum=0.5, out=str(out), resume=True, **common)
    )
    err = capsys.readouterr().err
    assert "--lr 0.001 (was 0.01)" in err and "--momentum 0.5 (was 0.9)" in err
    assert [r["lr"] for r in resumed.history] == [1e-2, 1e-3]
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["config"]["lr"] == 1e-3
    group = saved["optimizer"]["param_groups"][0]
    assert group["lr"] == 1e-3 and group["momentum"] == 0.5
    # the new rate is the one used: resuming equals a run that had it from the start of epoch 2
    again = train(TrainConfig(epochs=2, lr=1e-3, momentum=0.5, out=str(out), resume=True, **common))
    assert again.history == resumed.history  # nothing left to train, nothing changed


@row("T23")
def test_resuming_a_complete_run_changes_no_file_and_says_how_to_continue(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "resnet", *ARGV, "--out", str(out)]
    assert main(argv) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert main([*argv, "--resume", "--lr", "0.5"]) == 0
    captured = capsys.readouterr()
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert f"the run in {out} is already complete (1 epoch(s))" in captured.err
    assert "give --epochs 2 or more with --resume" in captured.err
    assert "--lr" not in captured.err  # no change is applied or recorded
    assert f"the finished run in {out}/" in captured.out and "wrote" not in captured.out
    # its result is the checkpoint's
    common = dict(model="resnet", epochs=1, out=str(out), resume=True, **TINY)
    first = train(TrainConfig(**common))
    assert not first.trained and first.history == json.loads(
        "[" + ",".join((out / "metrics.jsonl").read_text().splitlines()) + "]"
    )
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, saved["model"][name]), name
    # a garbled metrics.jsonl is rebuilt from the checkpoint, and the message says so
    good = (out / "metrics.jsonl").read_bytes()
    (out / "metrics.jsonl").write_bytes(b"\xff\xfe garbled\n")
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "its checkpoint is left as it is (metrics.jsonl rebuilt from it)" in err
    assert "files are left as they are" not in err
    assert (out / "metrics.jsonl").read_bytes() == good


@row("T14")
def test_divergence_is_one_line_that_suggests_a_lower_learning_rate(tmp_path, capsys) -> None:
    config = dict(TINY, optimizer="sgd", lr=1e6)
    with pytest.raises(TrainingDiverged, match="the training diverged.*lower --lr"):
        train(TrainConfig(model="resnet", epochs=3, out=str(tmp_path / "a"), **config))
    argv = ["train", "resnet", *ARGV, "--epochs", "3", "--optimizer", "sgd", "--lr", "1e6"]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "the training diverged", "try a lower --lr")


@row("T10", "T15")
@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--device", "banana"], "--device 'banana' is not a device"),
        (["--train-subset", "-1"], "argument --train-subset: must be a non-negative integer"),
        (["--test-subset", "-5"], "argument --test-subset: must be a non-negative integer"),
        (["--crop-padding", "-2"], "argument --crop-padding: must be an integer >= -1, got -2"),
        (
            ["--warmup-epochs", "-1"],
            "argument --warmup-epochs: must be a number of epochs from 0 to 1e6",
        ),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, fragment) -> None:
    argv = ["train", "resnet", *ARGV, "--out", str(tmp_path / "o"), *extra]
    try:  # a value out of an option's range stops the parse: argparse exits
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    assert status == 2
    _one_line_error(capsys, fragment)
    assert not (tmp_path / "o").exists()


@row("T15")
@pytest.mark.parametrize(
    "option, message",
    [
        (dict(train_subset=-1), "train_subset must be non-negative, got -1"),
        (dict(test_subset=-5), "test_subset must be non-negative, got -5"),
        (dict(crop_padding=-2), "crop_padding must be -1 (automatic), 0 (off) or positive"),
        (dict(warmup_epochs=-1.0), "warmup_epochs must be non-negative, got -1.0"),
    ],
)
def test_bad_options_of_a_train_config_are_refused(tmp_path, option, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(out=str(tmp_path / "o"), **option)
    assert not (tmp_path / "o").exists()


@row("T9")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "resnet", *ARGV, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    _one_line_error(capsys, "CUDA is not available", "--device cpu")


@row("T11", "T12")
def test_out_that_is_a_file_or_read_only_is_a_one_line_error(tmp_path, capsys, monkeypatch) -> None:
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["train", "resnet", *ARGV, "--out", str(target)]) == 2
    _one_line_error(capsys, "is a file, not a directory")
    assert target.read_text() == "keep me"
    # a read-only directory (simulated: root ignores the permission bits)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(readonly)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "open", refuse)
    assert main(["train", "resnet", *ARGV, "--out", str(readonly)]) == 2
    _one_line_error(capsys, "cannot create files there (Permission denied)")
    assert list(readonly.iterdir()) == []
    # the benchmark too, before it measures anything (it ran, then failed to write)
    assert main(["bench", "--parts", "gpu", "--out", str(readonly)]) == 2
    _one_line_error(capsys, "cannot create files there (Permission denied)")
    assert list(readonly.iterdir()) == []


@row("T13")
def test_a_wrong_shaped_checkpoint_is_a_one_line_error(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(TrainConfig(model="resnet", epochs=1, out=str(out), **TINY))
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    name = next(iter(saved["model"]))
    saved["model"][name] = torch.zeros(3, 1)
    torch.save(saved, out / "checkpoint.pt")
    assert main(["train", "resnet", *ARGV, "--epochs", "2", "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "does not fit this model", "size mismatch")


def _ddp_refused_worker(rank: int, world: int, port: int, out: str, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    try:
        train(TrainConfig(model="resnet", epochs=1, out=out, device="cpu", resume=resume, **TINY))
    except (RunDirectoryError, CheckpointError) as error:
        with open(f"{out}.refused{rank}", "w") as f:
            f.write(str(error))


@row("T1")
def test_under_ddp_every_rank_stops_when_rank_0_refuses_the_directory(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = preloaded_context().get_start_method()  # ranks forked, imports done once
    args = (2, port, str(out), False)
    torch.multiprocessing.start_processes(_ddp_refused_worker, args, nprocs=2, start_method=start)
    assert "holds an earlier run" in (tmp_path / "run.refused0").read_text()
    assert "rank 0 refused --out" in (tmp_path / "run.refused1").read_text()
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    # --resume without a run: rank 0's error, and every rank stops
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(tmp_path / "none"), True)
    torch.multiprocessing.start_processes(_ddp_refused_worker, args, nprocs=2, start_method=start)
    assert "--resume: no checkpoint at" in (tmp_path / "none.refused0").read_text()
    assert "rank 0 refused --out" in (tmp_path / "none.refused1").read_text()


@row("T16")
def test_an_unexpected_error_is_one_line_unless_the_traceback_is_asked_for(
    tmp_path, capsys, monkeypatch
) -> None:
    import neuralode.training

    def broken(config):
        raise RuntimeError("something broke\nin two lines")

    monkeypatch.setattr(neuralode.training, "train", broken)
    argv = ["train", "resnet", *ARGV, "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    _one_line_error(capsys, "RuntimeError: something broke in two lines", "NEURALODE_TRACEBACK=1")
    monkeypatch.setenv("NEURALODE_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        main(argv)


def test_a_file_system_without_locks_runs_unprotected_with_a_warning(
    tmp_path, capsys, monkeypatch
) -> None:
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    lock = RunLock(tmp_path).acquire()
    assert "cannot lock" in capsys.readouterr().err
    assert (tmp_path / LOCK_NAME).exists()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_ctrl_c_while_the_command_line_loads_is_one_line(capsys, monkeypatch) -> None:
    """Ctrl-C before the command runs (imports, building the parser, parsing)."""
    import neuralode.cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(neuralode.cli, "build_parser", interrupted)
    for argv, command in [
        (["experiment", "spirals", "--out", "o"], "neuralode experiment spirals"),
        (["train", "odenet", "--lr", "0.1"], "neuralode train"),
        (["--help"], "neuralode"),
    ]:
        try:
            status = main(argv)
        except KeyboardInterrupt:  # escaping, it would end the test session
            pytest.fail(f"Ctrl-C escaped main({argv})")
        assert status == 130
        assert capsys.readouterr().err == f"{command}: error: interrupted\n"


@row("T17")
def test_a_malformed_command_line_is_one_line(capsys) -> None:
    for argv, fragment in [
        (["train", "odenet", "--lr", "abc"], "argument --lr: must be a positive number, got 'abc'"),
        (["train", "odenet", "--lr", "abc"], "neuralode train: error: "),
        (
            ["train", "odenet", "--bogus"],
            "neuralode train: error: unrecognized arguments: --bogus (see neuralode train --help)",
        ),
        (
            ["experiment", "toy2d", "--bogus", "1"],
            "neuralode experiment toy2d: error: unrecognized arguments: --bogus 1",
        ),
        (["fly"], "invalid choice: 'fly'"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "--help)" in lines[0], lines


@row("T18")
def test_overwrite_removes_the_earlier_runs_outputs_and_keeps_other_files(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(TrainConfig(model="odenet", epochs=1, out=str(out), **TINY))
    # what an ODE-Net run with plots and --tensorboard, or an experiment, leaves besides
    earlier = ["nfe.png", "tolerance.png", "tolerance.json", "trajectories.png", "table.md"]
    earlier += ["metrics.json", "tensorboard/events.out.tfevents.1", "checkpoints/job.pt"]
    for name in earlier:
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("earlier run")
    (out / "notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "plot.png").write_text("mine")
    assert main(["train", "resnet", *ARGV, "--out", str(out), "--overwrite"]) == 0
    for name in earlier:
        assert not (out / name).exists(), name
    assert not (out / "tensorboard").exists() and not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "mine" / "plot.png").read_text() == "mine"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["model"] == "resnet"
    # an experiment's --overwrite goes through the same function
    (out / "samples.png").write_text("earlier run")
    rundir.open_run_directory(out, resume=False, overwrite=True).release()
    assert sorted(p.name for p in out.iterdir()) == ["mine", "notes.txt"]


@row("T24", "T25")
def test_files_with_the_names_runs_write_are_the_users_until_an_earlier_run(
    tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    (out / "odenet").mkdir(parents=True)
    (out / "odenet" / "mywork.txt").write_text("mine")
    (out / "results.json").write_text("mine")
    argv = ["train", "resnet", *ARGV, "--out", str(out)]
    assert main(argv) == 2  # a plain run: refused, nothing written
    _one_line_error(capsys, "holds files with the names runs write (odenet, results.json)")
    assert sorted(p.name for p in out.iterdir()) == ["odenet", "results.json"]
    assert main([*argv, "--overwrite"]) == 0  # nothing removed, the two recorded as the user's
    capsys.readouterr()
    assert (out / "odenet" / "mywork.txt").read_text() == "mine"
    assert (out / "results.json").read_text() == "mine"  # (train writes no results.json)
    recorded = json.loads((out / rundir.USER_FILES_RECORD).read_text())
    assert recorded == ["odenet", "results.json"]
    assert main([*argv, "--overwrite"]) == 0  # the earlier run goes, the user's files stay
    assert (out / "odenet" / "mywork.txt").read_text() == "mine"
    assert (out / "results.json").read_text() == "mine"
    (out / "tolerance.png").write_text("the earlier run's")
    rundir.open_run_directory(out, resume=False, overwrite=True).release()
    assert sorted(p.name for p in out.iterdir()) == [
        rundir.USER_FILES_RECORD, "odenet", "results.json"
    ]  # fmt: skip
    rundir.open_run_directory(out, resume=False, overwrite=False).release()  # the user's alone


@row("T26", "T27")
def test_bench_keeps_to_its_own_out_and_refuses_options_it_would_ignore(tmp_path, capsys) -> None:
    demo_run = tmp_path / "demo"
    demo_run.mkdir()
    (demo_run / "work_precision.png").write_text("the demo's")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "bench.md").write_text("mine")
    for out, fragment in [
        (demo_run, "holds files that other neuralode commands write (work_precision.png)"),
        (notes, "holds a bench.md that neuralode bench did not write"),
    ]:
        assert main(["bench", "--parts", "gpu", "--out", str(out)]) == 2
        _one_line_error(capsys, fragment)
    assert (demo_run / "work_precision.png").read_text() == "the demo's"
    assert sorted(p.name for p in notes.iterdir()) == ["bench.md"]
    out = str(tmp_path / "bench")
    for options, fragment in [
        (["--rtols", "1e-3"], "--rtols sets the work-precision part's tolerances"),
        (["--device", "cpu"], "--device places the gpu and diffrax parts"),
        (["--parts", "work-precision", "--rtols", "1e-3", "0.1"], "--rtols 0.1: the work-"),
    ]:
        assert main(["bench", "--parts", "core", *options, "--out", out]) == 2
        _one_line_error(capsys, fragment)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--threads", "100000", "--out", out])
    assert info.value.code == 2
    _one_line_error(capsys, "argument --threads: must be an integer from 0 to 1024")
    assert not (tmp_path / "bench").exists()


@row("T19")
def test_a_run_failing_before_its_first_checkpoint_leaves_nothing_that_blocks_a_rerun(
    tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # more fixed steps than max_steps: the first batch fails
    argv = ["train", "odenet", *ARGV, "--method", "rk4", "--out", str(out)]
    assert main([*argv, "--step-size", "1e-9", "--tensorboard"]) == 2
    line = _one_line_error(capsys, "the ODE solve failed", "use a larger --step-size (now 1e-09)")
    assert "diverged" not in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(argv) == 0  # a plain rerun, neither --resume nor --overwrite
    assert (out / "checkpoint.pt").exists() and (out / "notes.txt").read_text() == "mine"
    # a diverging first epoch: removed too, and the message does not ask for --overwrite
    diverging = ["train", "resnet", *ARGV, "--optimizer", "sgd", "--lr", "1e30"]
    assert main([*diverging, "--out", str(tmp_path / "b")]) == 2
    line = _one_line_error(capsys, "the training diverged", "try a lower --lr")
    assert "--overwrite" not in line and list((tmp_path / "b").iterdir()) == []


@row("T20")
def test_missing_matplotlib_is_refused_before_any_work_unless_no_plots(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    argv = [arg for arg in ARGV if arg != "--no-plots"]
    assert main(["train", "resnet", *argv, "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, "the plots need matplotlib", "pip install 'neuralode[plots]'")
    assert not (tmp_path / "a").exists()  # refused before the data, the model or --out
    assert main(["train", "resnet", *argv, "--no-plots", "--out", str(tmp_path / "b")]) == 0


@row("T21")
def test_resume_with_fewer_epochs_than_the_run_has_begun_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "resnet", *ARGV, "--epochs", "2", "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "resnet", *ARGV, "--epochs", "1", "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "--resume --epochs 1", "finished epoch 2", "--epochs 2 or more")
    assert _snapshot(out) == before
    # interrupted inside epoch 2: epoch 2 has begun, --epochs 1 would drop its steps
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    checkpoint.update(epoch=1, batch=1, history=checkpoint["history"][:1])
    torch.save(checkpoint, out / "checkpoint.pt")
    assert main(["train", "resnet", *ARGV, "--epochs", "1", "--out", str(out), "--resume"]) == 2
    _one_line_error(capsys, "has already begun epoch 2", "--epochs 2 or more")


def test_resume_names_the_solver_settings_it_changes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "odenet", *ARGV, "--out", str(out)]
    assert main([*argv, "--method", "rk4"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2", "--resume", "--method", "euler", "--rtol", "0.1"]) == 0
    err = capsys.readouterr().err
    assert "resuming with --method 'euler' (was 'rk4'), --rtol 0.1 (was 0.001)" in err
    assert json.loads((out / "config.json").read_text())["method"] == "euler"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["method"] == "euler"
    # a model without an ODE solver names none of them
    assert main(["train", "resnet", *ARGV, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    again = ["train", "resnet", *ARGV, "--out", str(tmp_path / "r"), "--resume", "--epochs", "2"]
    assert main([*again, "--method", "euler"]) == 0
    assert "resuming with --method" not in capsys.readouterr().err


@row("T22")
@pytest.mark.parametrize(
    "command",
    [["train", "resnet", *ARGV], ["demo"], ["experiment", "toy2d", "--quick"], ["bench"]],
)
def test_an_empty_out_is_a_usage_error_that_writes_nothing(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # Path("") is the current directory
    with pytest.raises(SystemExit) as stop:
        main([*command, "--out", ""])
    assert stop.value.code == 2
    _one_line_error(capsys, "argument --out: must name a directory, got ''")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "another dict"])
def test_a_damaged_checkpoint_is_one_short_line_naming_the_fix(tmp_path, capsys, damage) -> None:
    out = tmp_path / "run"
    assert main(["train", "resnet", *ARGV, "--out", str(out)]) == 0
    path = out / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "not a zip":
        path.write_text("garbage")
    else:
        torch.save({"a": 1}, path)
    capsys.readouterr()
    assert main(["train", "resnet", *ARGV, "--epochs", "2", "--out", str(out), "--resume"]) == 2
    line = _one_line_error(capsys, str(path), "start the run again with --overwrite")
    assert len(line) < 400, line  # torch's paragraphs cut to their first sentence


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "no_checkpoint"])
def test_train_resume_on_an_experiments_run_names_it(tmp_path, capsys, checkpoint) -> None:
    """The experiment is named, with or without a checkpoint.pt at the top (experiments keep
    theirs under checkpoints/), and --overwrite, which would delete its run, is not advised."""
    out = tmp_path / "experiment"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"command": "experiment", "experiment": "hnn"}))
    (out / "metrics.jsonl").write_text("")
    if checkpoint:
        torch.save({"job": "hnn"}, out / "checkpoint.pt")
    before = sorted(p.name for p in out.iterdir())
    assert main(["train", "resnet", *ARGV, "--resume", "--out", str(out)]) == 2
    line = _one_line_error(
        capsys, "holds a `neuralode experiment hnn` run, not a `neuralode train` run"
    )
    assert "--overwrite" not in line
    assert sorted(p.name for p in out.iterdir()) == before


@row("T28")
def test_a_diverging_experiment_stops_with_a_one_line_error(tmp_path, capsys):
    """A learning rate of 1000 turns the weights to NaN: the run stops at that step with
    the training's divergence message, not with an error about a distribution's
    arguments."""
    out = tmp_path / "run"
    argv = ["experiment", "latent-sde", "--out", str(out), "--series", "16", "--times", "6",
            "--iterations", "20", "--batch", "8", "--hidden", "8", "--no-progress",
            "--lr", "1000"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "the training diverged: the loss is nan at step" in err and "lower learning rate" in err


def test_ctrl_c_during_the_end_of_training_plots_leaves_them_to_resume(
    tmp_path, capsys, monkeypatch
) -> None:
    """The final checkpoint marks the end-of-training plots pending until they are drawn: a
    run stopped while drawing them is complete, and its ``--resume`` draws them (once)."""
    pytest.importorskip("matplotlib")
    import neuralode.viz.training

    out = tmp_path / "run"
    argv = ["train", "odenet", *[a for a in ARGV if a != "--no-plots"], "--out", str(out)]
    argv += ["--sweep-tolerances", "0.01"]
    drawn = neuralode.viz.training.save_model_plots

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(neuralode.viz.training, "save_model_plots", interrupted)
    assert main(argv) == 130
    assert torch.load(out / "checkpoint.pt", weights_only=False)["plots"] == "pending"
    assert not (out / "trajectories.png").exists()
    monkeypatch.setattr(neuralode.viz.training, "save_model_plots", drawn)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "its end-of-training plots, which it stopped before, are drawn now" in (
        capsys.readouterr().err
    )
    assert (out / "trajectories.png").exists() and (out / "tolerance.png").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["plots"] == "written"
    before = _snapshot(out)
    assert main([*argv, "--resume"]) == 0
    assert _snapshot(out) == before and "its files are left as they are" in capsys.readouterr().err


@row("T29")
def test_table1_resume_refuses_no_run_another_recipe_and_a_rerun_names_the_out(
    tmp_path, capsys
) -> None:
    """``table1 --resume`` into a directory without a run (it would train from scratch),
    ``--resume`` with another ``--lr`` (the table would name only the new rate), and a plain
    rerun (refused, naming the ``--out`` given, not the model's directory): each is refused
    before any training."""
    out = tmp_path / "t"
    argv = ["experiment", "table1", "--data", "digits", "--train-subset", "32", "--test-subset"]
    argv += ["16", "--epochs", "1", "--channels", "8", "--batch-size", "16", "--threads", "1"]
    argv += ["--no-plots", "--memory-batch", "4", "--memory-step-sizes", "0.5", "--models"]
    argv += ["resnet"]
    assert main([*argv, "--out", str(tmp_path / "none"), "--resume"]) == 2
    _one_line_error(capsys, f"--resume: no run in {tmp_path / 'none'} (no model's directory")
    assert not (tmp_path / "none").exists()
    assert main([*argv, "--out", str(out)]) == 0
    (out / "table1.json").unlink()  # as if stopped before the table: only the runs compare
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--resume", "--lr", "0.01"]) == 2
    _one_line_error(
        capsys,
        f"--resume: ResNet in {out}: the checkpoint comes from an incompatible run: --lr was "
        "0.006, now 0.01. Resume with the same options or use another --out (the table's rows "
        "share one recipe)",
    )
    assert main([*argv, "--out", str(out)]) == 2
    _one_line_error(capsys, f"--out {out} holds an earlier run of ResNet (resnet); continue")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
