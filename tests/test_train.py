"""``neuralode train``: files written, exact resume, Ctrl-C checkpoints, DDP, clear errors."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable

import pytest
import torch
from script_runs import preloaded_context

from neuralode.cli import main
from neuralode.training import INTERRUPTED, CheckpointError, TrainConfig, train

pytest.importorskip("sklearn", reason="the training tests use scikit-learn's digits")

TINY = dict(
    data="digits", channels=8, train_subset=64, test_subset=32, batch_size=16,
    test_batch_size=32, threads=1, plots=False, rtol=1e-2, atol=1e-2,
)  # fmt: skip


def sigint_at(epoch: int, batch: int) -> Callable[[int, int], None]:
    """An ``on_batch`` callback that sends SIGINT (as Ctrl-C does) at that epoch and batch."""

    def interrupt(at_epoch: int, at_batch: int) -> None:
        if (at_epoch, at_batch) == (epoch, batch):
            os.kill(os.getpid(), signal.SIGINT)

    return interrupt


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _deterministic(history: list[dict]) -> list[dict]:
    skip = {"time_s", "cpu_time_s", "eval_time_s", "eval_cpu_time_s", "peak_memory_mb"}
    return [{k: v for k, v in r.items() if k not in skip} for r in history]


def test_cli_train_writes_metrics_checkpoint_and_plots(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    argv = ["train", "odenet", "--data", "digits", "--train-subset", "48", "--test-subset", "24"]
    argv += ["--epochs", "2", "--channels", "8", "--batch-size", "16", "--threads", "1"]
    argv += ["--sweep-images", "24", "--sweep-tolerances", "0.1", "0.001", "--out", str(out)]
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "nfe_forward"):
        assert all(r[key] is not None for r in lines), key
    assert lines[0]["nfe_backward"] > 0 and lines[0]["peak_memory_mb"] > 0
    for name in ("curves.png", "nfe.png", "trajectories.png", "tolerance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    sweep = json.loads((out / "tolerance.json").read_text())
    assert [r["tol"] for r in sweep] == [0.1, 0.001] and sweep[1]["nfe"] > sweep[0]["nfe"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["model"] == "odenet"


def test_training_reduces_the_loss(tmp_path) -> None:
    options = {**TINY, "train_subset": 128, "channels": 16}
    config = TrainConfig(
        model="resnet", epochs=4, out=str(tmp_path), lr=1e-2, crop_padding=0, **options
    )
    history = train(config).history
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.3


def test_two_epochs_equal_one_epoch_plus_a_resumed_epoch(tmp_path) -> None:
    common = dict(model="odenet", schedule="constant", warmup_epochs=0.0, **TINY)
    straight = train(TrainConfig(epochs=2, out=str(tmp_path / "a"), **common))
    train(TrainConfig(epochs=1, out=str(tmp_path / "b"), **common))
    resumed = train(TrainConfig(epochs=2, out=str(tmp_path / "b"), resume=True, **common))
    _assert_identical(_params(straight.model), _params(resumed.model))
    assert _deterministic(straight.history) == _deterministic(resumed.history)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path) -> None:
    """SIGINT in the middle of an epoch: the checkpoint holds the batch position, partial
    sums and the augmentation RNG, so the resumed run equals an uninterrupted one."""
    common = dict(model="rknet", epochs=2, **TINY)
    handler = signal.getsignal(signal.SIGINT)
    straight = train(TrainConfig(out=str(tmp_path / "a"), **common))

    stopped = train(TrainConfig(out=str(tmp_path / "b"), **common), on_batch=sigint_at(1, 1))
    assert stopped.status == INTERRUPTED and len(stopped.history) == 1
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["batch"]) == (1, 2)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    assert resumed.status == 0
    _assert_identical(_params(straight.model), _params(resumed.model))
    assert _deterministic(straight.history) == _deterministic(resumed.history)
    assert signal.getsignal(signal.SIGINT) is handler  # restored after training


def test_a_second_sigterm_stops_at_once_as_a_second_ctrl_c(tmp_path) -> None:
    """``timeout`` or ``kill`` sending SIGTERM twice interrupts a batch that never ends."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in (signal.SIGINT, signal.SIGTERM):

        def twice(epoch: int, batch: int, signum: int = signum) -> None:
            if (epoch, batch) == (0, 1):
                os.kill(os.getpid(), signum)
                os.kill(os.getpid(), signum)

        config = TrainConfig(model="resnet", epochs=1, out=str(tmp_path / signum.name), **TINY)
        with pytest.raises(KeyboardInterrupt):
            train(config, on_batch=twice)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored


def test_resume_errors_are_clear(tmp_path, capsys) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*checkpoint.pt"):
        train(TrainConfig(model="resnet", epochs=1, out=str(tmp_path), resume=True, **TINY))
    train(TrainConfig(model="resnet", epochs=1, out=str(tmp_path), **TINY))
    with pytest.raises(CheckpointError, match="the model was 'resnet', now 'rknet'"):
        train(TrainConfig(model="rknet", epochs=1, out=str(tmp_path), resume=True, **TINY))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    argv = ["train", "resnet", "--data", "digits", "--out", str(tmp_path), "--resume"]
    assert main(argv) == 2
    assert "cannot be read as a neuralode checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(SystemExit) as stop:  # an unknown method stops the parse
        main(["train", "odenet", "--data", "digits", "--method", "rk45", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "unknown method 'rk45'" in capsys.readouterr().err


def test_missing_mnist_directory_is_a_clear_cli_error(tmp_path, capsys) -> None:
    argv = ["train", "odenet", "--data", "mnist", "--data-dir", str(tmp_path / "none")]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert "missing train-images-idx3-ubyte.gz" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a directory")
    argv = ["train", "odenet", "--data", "mnist", "--data-dir", str(tmp_path / "file")]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir {tmp_path / 'file'} is a file, not a directory" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_download_cache_that_cannot_be_created_is_a_clear_cli_error(
    tmp_path, capsys, monkeypatch
) -> None:
    from neuralode.data import datasets

    def no_network(*args, **kwargs):
        raise AssertionError("nothing is downloaded")

    monkeypatch.setattr(datasets, "download", no_network)
    (tmp_path / "file").write_text("not a directory")
    argv = ["train", "odenet", "--data", "mnist", "--download", "--cache-dir"]
    assert main([*argv, str(tmp_path / "file"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create {tmp_path / 'file' / 'mnist'} (Not a directory)" in err
    assert "pass --cache-dir a writable directory" in err and len(err.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    config = TrainConfig(model="odenet", epochs=1, out=out, device="cpu", **TINY)
    result = train(config)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")
    torch.save(result.history, f"{out}/history{rank}.pt")


def _ddp_run(rank: int, world: int, port: int, out: str, stop: bool, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    config = TrainConfig(model="rknet", epochs=2, out=out, device="cpu", resume=resume, **TINY)
    # Ctrl-C reaches rank 0 alone, inside epoch 2: every rank stops at that batch
    result = train(config, on_batch=sigint_at(1, 0) if stop and rank == 0 else None)
    torch.save(_params(result.model), f"{out}/rank{rank}.pt")
    torch.save(_deterministic(result.history), f"{out}/history{rank}.pt")


def test_ddp_ctrl_c_resumes_exactly_with_each_ranks_state(tmp_path) -> None:
    """Each rank's crops and partial sums are its own: the checkpoint keeps every rank's
    random states and sums, so the resumed run equals the uninterrupted one."""
    start = preloaded_context().get_start_method()

    def launch(out, stop=False, resume=False):
        args = (2, _free_port(), str(out), stop, resume)
        torch.multiprocessing.start_processes(_ddp_run, args, nprocs=2, start_method=start)

    launch(tmp_path / "a")
    launch(tmp_path / "b", stop=True)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["batch"], saved["world_size"]) == (1, 1, 2)
    assert not torch.equal(saved["ranks"][0]["sums"], saved["ranks"][1]["sums"])
    with pytest.raises(CheckpointError, match=r"trained with 2 process\(es\), this one has 1"):
        train(TrainConfig(model="rknet", epochs=2, out=str(tmp_path / "b"), resume=True, **TINY))
    launch(tmp_path / "b", resume=True)
    for rank in (0, 1):
        straight = torch.load(tmp_path / "a" / f"rank{rank}.pt", weights_only=True)
        _assert_identical(
            straight, torch.load(tmp_path / "b" / f"rank{rank}.pt", weights_only=True)
        )
    history = torch.load(tmp_path / "a" / "history0.pt", weights_only=True)
    assert history == torch.load(tmp_path / "b" / "history0.pt", weights_only=True)
    assert all(record["test_nfe"] is not None for record in history)  # (through DDP's wrapper)


def test_ddp_two_processes_keep_identical_parameters(tmp_path) -> None:
    """Two CPU processes (gloo), different shards and different adaptive NFE, same weights."""
    # the ranks: children of the tests' fork server (torch and neuralode imported once)
    start = preloaded_context().get_start_method()
    args = (2, _free_port(), str(tmp_path))
    torch.multiprocessing.start_processes(_ddp_worker, args, nprocs=2, start_method=start)
    first = torch.load(tmp_path / "rank0.pt", weights_only=True)
    second = torch.load(tmp_path / "rank1.pt", weights_only=True)
    _assert_identical(first, second)
    initial = TrainConfig(model="odenet", **TINY)
    torch.manual_seed(initial.seed)
    from neuralode.training import build_model

    untrained = build_model(initial).state_dict()
    assert not torch.equal(
        first["ode.dynamics.conv1.conv.weight"], untrained["ode.dynamics.conv1.conv.weight"]
    )
    history = torch.load(tmp_path / "history0.pt", weights_only=True)
    assert history[0]["world_size"] == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["world_size"] == 2  # only rank 0 writes
