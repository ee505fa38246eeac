"""Data for the latent models: spirals, the periodic toy set, the PhysioNet 2012 reader (on
generated files in its published format), and the spirals experiment's smoke run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from neuralode.data import (
    PHYSIONET_STATIC,
    PHYSIONET_VARIABLES,
    PhysioNetData,
    load_physionet,
    make_periodic,
    make_spirals,
)
from neuralode.models import collate_irregular


def _polar_angle_steps(points: torch.Tensor, centre: tuple[float, float]) -> torch.Tensor:
    p = points - torch.tensor(centre, dtype=points.dtype)
    angle = torch.atan2(p[..., 1], p[..., 0])
    return torch.remainder(torch.diff(angle) + math.pi, 2 * math.pi) - math.pi


def test_spirals_directions_noise_and_counts() -> None:
    data = make_spirals(200, n_obs=30, noise_std=0.3, seed=1)
    assert len(data) == 200 and data.ts.shape == (200,)
    assert data.trajectories.shape == data.noisy.shape == (200, 200, 2)
    assert int(data.clockwise.sum()) == 100  # half clockwise
    assert data.observed.sum(1).tolist() == [30] * 200  # 30 distinct times each
    assert not bool(data.observed[:, 100:].any())  # never in the extrapolation window
    assert bool((torch.diff(data.ts) > 0).all()) and float(data.ts[0]) == 0
    for i in range(6):
        centre = (-5.0, 0.0) if data.clockwise[i] else (5.0, 0.0)
        steps = _polar_angle_steps(data.trajectories[i], centre)
        assert bool((steps < 0).all() if data.clockwise[i] else (steps > 0).all())
        radius = (data.trajectories[i] - torch.tensor(centre)).norm(dim=-1)
        assert bool((torch.diff(radius) > 0).all())  # outward, Archimedean: r = b theta
    residual = data.noisy - data.trajectories
    assert abs(float(residual.std()) - 0.3) < 0.01 and abs(float(residual.mean())) < 0.01
    again = make_spirals(200, n_obs=30, noise_std=0.3, seed=1)
    assert torch.equal(again.noisy, data.noisy) and torch.equal(again.observed, data.observed)
    assert not torch.equal(make_spirals(200, n_obs=30, seed=2).noisy, data.noisy)
    with pytest.raises(ValueError, match="n_obs"):
        make_spirals(10, n_obs=101)


def test_periodic_data_is_irregular_and_subsampled() -> None:
    data = make_periodic(n=50, n_times=40, n_obs=12, t_max=5.0, noise_std=0.0, seed=0)
    assert data.ts.shape == (40,) and float(data.ts[0]) == 0 and float(data.ts[-1]) <= 5
    assert bool((torch.diff(data.ts) > 0).all())
    gaps = torch.diff(data.ts)
    assert float(gaps.max()) > 2 * float(gaps.min())  # irregular
    assert data.values.shape == data.mask.shape == (50, 40, 1)
    assert data.mask.sum((1, 2)).tolist() == [12] * 50
    expected = data.amplitude[:, None] * torch.sin(
        2 * math.pi * data.frequency[:, None] * data.ts + data.phase[:, None]
    )
    torch.testing.assert_close(data.clean[..., 0], expected)
    torch.testing.assert_close(data.values, data.clean * data.mask)
    assert 0.2 <= float(data.frequency.min()) and float(data.frequency.max()) <= 1.0


def _write_record(path: Path, record_id: int, rows: list[str], weight: str = "-1") -> None:
    header = [
        "Time,Parameter,Value",
        f"00:00,RecordID,{record_id}",
        "00:00,Age,54",
        "00:00,Gender,0",
        "00:00,Height,-1",
        "00:00,ICUType,4",
        f"00:00,Weight,{weight}",
    ]
    path.write_text("\n".join(header + rows) + "\n")


def test_physionet_reader_on_generated_files(tmp_path: Path) -> None:
    folder = tmp_path / "set-a"
    folder.mkdir()
    _write_record(
        folder / "132539.txt",
        132539,
        ["00:07,GCS,15", "00:07,HR,73", "00:37,HR,77", "00:37,HR,79", "01:37,Weight,80.5"],
        weight="82.1",
    )
    _write_record(folder / "132540.txt", 132540, ["00:00,HR,60", "48:00,Temp,37.5"])
    raw = load_physionet(tmp_path, normalize=False, dtype=torch.float64)
    assert isinstance(raw, PhysioNetData)  # exported with the function returning it
    first, second = raw.records
    assert first.record_id == "132539" and len(PHYSIONET_VARIABLES) == 37
    assert first.ts.tolist() == pytest.approx([7 / 60, 37 / 60, 97 / 60])
    hr, gcs, weight = (PHYSIONET_VARIABLES.index(n) for n in ("HR", "GCS", "Weight"))
    assert first.values[:, hr].tolist() == [73, 78, 0]  # repeated HR at 00:37 averaged
    assert first.mask[:, hr].tolist() == [1, 1, 0] and first.mask[:, gcs].tolist() == [1, 0, 0]
    assert first.mask[:, weight].tolist() == [0, 0, 1] and first.mask.sum() == 4
    static = dict(zip(PHYSIONET_STATIC, first.static.tolist()))
    assert static["Age"] == 54 and static["Weight"] == 82.1 and math.isnan(static["Height"])
    assert second.ts.tolist() == [0.0, 48.0]  # a measurement at 00:00 is not a descriptor
    assert math.isnan(float(second.static[-1]))
    # normalised: zero mean, unit std over the observed HR values; masked entries stay 0
    data = load_physionet(folder, dtype=torch.float64)
    hr_values = torch.cat([r.values[:, hr][r.mask[:, hr] > 0] for r in data.records])
    assert float(hr_values.mean()) == pytest.approx(0, abs=1e-12)
    assert float(hr_values.std(unbiased=False)) == pytest.approx(1)
    assert float(data.mean[hr]) == pytest.approx((73 + 78 + 60) / 3)
    ts, values, mask = collate_irregular([(r.ts, r.values, r.mask) for r in data.records])
    assert ts.tolist() == pytest.approx([0, 7 / 60, 37 / 60, 97 / 60, 48])
    assert values.shape == mask.shape == (2, 5, 37) and mask.sum() == 6
    quantised = load_physionet(folder, normalize=False, quantization=1.0)
    assert quantised.records[0].ts.tolist() == [0.0, 1.0, 2.0]


def test_physionet_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*set-a"):
        load_physionet(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no PhysioNet .txt records"):
        load_physionet(tmp_path)
    _write_record(tmp_path / "1.txt", 1, ["00:07,Pulse,15"])
    with pytest.raises(ValueError, match=r"1.txt:8: unknown parameter 'Pulse'"):
        load_physionet(tmp_path)
    _write_record(tmp_path / "1.txt", 1, ["7 min,HR,15"])
    with pytest.raises(ValueError, match="is not HH:MM"):
        load_physionet(tmp_path)


def test_physionet_refuses_what_it_would_read_wrongly(tmp_path: Path, monkeypatch) -> None:
    """Malformed times (-1:30, 00:75) and non-finite values are refused naming the file and
    line (a nan would make the variable's mean, std and every normalised value NaN); a file
    named as the directory, a file that is not UTF-8 and an unreadable record are named as
    such; ~ is the home directory."""
    for stamp in ("-1:30", "00:75", "1:5", "01:30:00"):
        _write_record(tmp_path / "1.txt", 1, [f"{stamp},HR,15"])
        with pytest.raises(ValueError, match=rf"1.txt:8: time '{stamp}' is not HH:MM"):
            load_physionet(tmp_path)
    for value in ("nan", "inf", "-Infinity"):
        _write_record(tmp_path / "1.txt", 1, ["00:07,HR,70", f"00:09,HR,{value}"])
        with pytest.raises(ValueError, match=rf"1.txt:9: value '{value}' is not finite"):
            load_physionet(tmp_path)
    _write_record(tmp_path / "1.txt", 1, ["00:07,HR,70", "47:59,HR,80"])
    assert load_physionet(tmp_path, normalize=False).records[0].ts.tolist()[-1] == pytest.approx(
        47 + 59 / 60
    )
    with pytest.raises(FileNotFoundError, match=r"1.txt' is a file, not a directory"):
        load_physionet(tmp_path / "1.txt")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_physionet("~", normalize=False).records) == 1
    (tmp_path / "2.txt").write_bytes("Time,Parameter,Value\n00:07,HR,7\xb0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"2.txt: not a text file of the PhysioNet format"):
        load_physionet(tmp_path)
    (tmp_path / "2.txt").unlink()
    (tmp_path / "3.txt").mkdir()  # unreadable as a record
    with pytest.raises(ValueError, match=r"3.txt: cannot read it \(Is a directory\)"):
        load_physionet(tmp_path)


def _run_spirals(tmp_path: Path, *extra: str) -> dict:
    pytest.importorskip("matplotlib")
    from neuralode.cli import main

    args = ["experiment", "spirals", "--quick", "--out", str(tmp_path), "--spirals", "10"]
    threads = torch.get_num_threads()
    try:
        assert main(args + ["--batch", "8", "--threads", "1", *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_spirals_experiment_smoke_run_writes_everything(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Two observation counts x two seeds in two worker processes: per-seed results, their
    mean and spread, weights and a plot per setting."""
    from script_runs import preloaded_context

    from neuralode.experiments import spirals

    # the workers: children of the tests' fork server (torch, neuralode, matplotlib imported
    # once) instead of spawned interpreters that import them for seconds each
    context = preloaded_context()
    monkeypatch.setattr(spirals.multiprocessing, "get_context", lambda method: context)
    metrics = _run_spirals(
        tmp_path, "--steps", "2", "--obs", "30", "5", "--seeds", "2", "--workers", "2"
    )
    printed = capsys.readouterr().out
    assert "7 train, 1 validation, 2 test" in printed and "2 worker(s)" in printed
    assert "| 30/100 |" in printed
    table = (tmp_path / "table2.md").read_text()
    assert "0.3937" in table and "0.1642" in table and "| 5/100 | 1 |" in table
    assert "mirror image" in table and "over seeds [0, 1]" in table
    for n_obs in ("30", "5"):
        summary = metrics["summary"][n_obs]
        for model in ("latent_ode", "rnn"):
            per_seed = []
            for seed in ("0", "1"):
                result = metrics["runs"][n_obs][seed][model]
                assert math.isfinite(result["rmse_extrapolation"]) and result["steps"] == 2
                assert summary[model]["per_seed"][seed] == result["rmse_extrapolation"]
                per_seed.append(result["rmse_extrapolation"])
                name = f"{model}_obs{n_obs}_seed{seed}.pt"
                assert torch.load(tmp_path / name, weights_only=True)
            assert summary[model]["mean"] == pytest.approx(sum(per_seed) / 2)
            assert summary[model]["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
        ratios = summary["ratio_per_seed"]
        assert summary["latent_wins"] == sum(r < 1 for r in ratios.values())
        for seed in ("0", "1"):
            png = (tmp_path / f"spirals_obs{n_obs}_seed{seed}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("select", ["best", "last"])
def test_spirals_experiment_reports_the_weights_it_selects(tmp_path: Path, select: str) -> None:
    """--select best ends with the weights of the evaluation with the lowest validation RMSE
    (against the noisy points), --select last with the last ones; the test spirals never
    enter the choice."""
    metrics = _run_spirals(
        tmp_path, "--steps", "6", "--eval-every", "1", "--obs", "10", "--select", select
    )
    for model in ("latent_ode", "rnn"):
        result = metrics["runs"]["10"]["0"][model]
        history = result["history"]
        assert [row["step"] for row in history] == [1, 2, 3, 4, 5, 6]
        scores = [row["validation_rmse_extrapolation_noisy"] for row in history]
        chosen = 1 + scores.index(min(scores)) if select == "best" else 6
        assert result["selected_step"] == chosen
        row = history[chosen - 1]
        assert result["validation_rmse_extrapolation"] == pytest.approx(
            row["validation_rmse_extrapolation"], rel=1e-6
        )
        assert result["rmse_extrapolation"] == pytest.approx(
            row["test_rmse_extrapolation"], rel=1e-6
        )
    assert f"--select {select}" in metrics["meta"]["command"]


def test_spirals_experiment_rejects_a_bad_rnn_hide_before_training(tmp_path: Path, capsys) -> None:
    """Out-of-range options stop the parse (argparse's exit status 2, naming the option);
    ``run`` checks them again for a namespace built in code, before training or writing."""
    import argparse

    from neuralode.experiments import spirals

    parser = argparse.ArgumentParser()
    spirals.add_arguments(parser)
    out = ["--out", str(tmp_path / "out")]
    bad = {"--rnn-hide": ("1.5", r"--rnn-hide: must be a number in \[0, 1\), got 1.5")}
    bad |= {name: ("0", f"{name}: must be a positive integer, got 0") for name in
            ("--workers", "--seeds", "--samples")}  # fmt: skip
    for name, (value, message) in bad.items():
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([*out, name, value])
        assert stop.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    args = parser.parse_args(out)
    args.rnn_hide = 1.5
    with pytest.raises(ValueError, match=r"--rnn-hide must be in \[0, 1\), got 1.5"):
        spirals.run(args)
    assert not (tmp_path / "out").exists()  # nothing trained or written
    for name in ("workers", "seeds", "samples"):
        args = parser.parse_args(out)
        setattr(args, name, 0)
        with pytest.raises(ValueError, match=f"--{name} must be at least 1, got 0"):
            spirals.run(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bound", ["iwae", "elbo"])
def test_spirals_training_bound_uses_the_posterior_samples(monkeypatch, bound) -> None:
    """--samples K: every training step's bound of the latent ODE comes from K posterior
    draws per spiral (noise (K, batch, latent) from the run's generator); --bound picks the
    importance-weighted bound or the ELBO, and the loss is that bound."""
    import argparse

    from neuralode.experiments import spirals
    from neuralode.models.latent import LatentODE

    seen, losses = [], []
    elbo = LatentODE.elbo

    def spy(self, *args, **kwargs):
        seen.append((kwargs["n_samples"], tuple(kwargs["noise"].shape), kwargs["iwae"]))
        out = elbo(self, *args, **kwargs)
        losses.append(out.loss().item())
        return out

    monkeypatch.setattr(LatentODE, "elbo", spy)
    data = make_spirals(12, n_obs=10, seed=0)
    model = LatentODE(2, latent_dim=3, dynamics="linear+mlp", decoder="linear")
    args = argparse.Namespace(
        batch=4,
        lr=0.01,
        eval_every=None,
        protocol="paper",
        seed=0,
        select="last",
        rnn_hide=None,
        samples=5,
        bound=bound,
    )
    result = spirals._train("latent", model, data, data, data, args, steps=3)
    assert seen == [(5, (5, 4, 3), bound == "iwae")] * 3
    assert [row["loss"] for row in result["history"]] == pytest.approx(losses)  # one per step
    assert math.isfinite(result["rmse_extrapolation"])


def test_physionet_options_are_checked_before_reading(tmp_path: Path) -> None:
    """A mean without a std was silently replaced by these records' statistics, a limit of 0
    or below read no (or all but the last) files, quantization=0 kept the raw times."""
    _write_record(tmp_path / "1.txt", 1, ["00:07,HR,70", "01:07,HR,80"])
    _write_record(tmp_path / "2.txt", 2, ["00:10,HR,90"])
    mean, std = torch.full((37,), 75.0), torch.full((37,), 5.0)
    with pytest.raises(ValueError, match="mean was given without std: pass both"):
        load_physionet(tmp_path, mean=mean)
    with pytest.raises(ValueError, match="std was given without mean"):
        load_physionet(tmp_path, std=std)
    with pytest.raises(ValueError, match=r"mean must have shape \(37,\).*got \(36,\)"):
        load_physionet(tmp_path, mean=mean[:36], std=std)
    with pytest.raises(ValueError, match="std must be positive and finite"):
        load_physionet(tmp_path, mean=mean, std=torch.zeros(37))
    for limit in (0, -1, 1.5):
        with pytest.raises(ValueError, match="limit must be a positive integer or None"):
            load_physionet(tmp_path, limit=limit)
    for quantization in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="quantization must be a positive number of hours"):
            load_physionet(tmp_path, quantization=quantization)
    hr = PHYSIONET_VARIABLES.index("HR")
    given = load_physionet(tmp_path, mean=mean, std=std, dtype=torch.float64)
    assert given.records[0].values[:, hr].tolist() == [-1.0, 1.0]
    assert torch.equal(given.mean, mean.double()) and len(given.records) == 2
    raw = load_physionet(tmp_path, normalize=False, mean=mean, std=std, limit=1)
    assert raw.mean is None and raw.std is None and len(raw.records) == 1


def test_spirals_counts_are_checked_and_float64_noise_is_drawn_in_float64() -> None:
    """Counts that are not integers in range are named; float64 noise is a float64 draw."""
    for name, value, rule in (
        ("n", 2.5, ">= 1"),
        ("n", 0, ">= 1"),
        ("n_extrap", -3, ">= 0"),
        ("n_window", True, ">= 1"),
        ("ntotal", 1000.0, ">= 1"),
        ("n_obs", "30", ">= 1"),
    ):
        with pytest.raises(ValueError, match=rf"{name} must be an integer {rule}, got {value!r}"):
            make_spirals(**{name: value})
    assert make_spirals(3, n_extrap=0).trajectories.shape == (3, 100, 2)
    # a = b = 0: the noise-free y is 0, so the noisy y is exactly the noise
    noise = make_spirals(50, a=0.0, b=0.0, noise_std=1.0, dtype=torch.float64).noisy[..., 1]
    assert not torch.equal(noise, noise.float().double())
    single = make_spirals(50, a=0.0, b=0.0, noise_std=1.0, seed=3).noisy[..., 1]
    assert single.dtype == torch.float32 and 0.9 < float(single.std()) < 1.1


def test_generators_name_non_finite_parameters() -> None:
    """NaN compared False with every bound: a NaN noise or t_max gave NaN data silently."""
    with pytest.raises(ValueError, match="finite noise_std >= 0, got n=4, noise_std=nan"):
        make_spirals(n=4, noise_std=float("nan"))
    with pytest.raises(ValueError, match="needs finite a and b"):
        make_spirals(n=4, b=float("inf"))
    for t_max in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="a finite t_max > 0"):
            make_periodic(n=4, t_max=t_max)
    for noise_std in (float("nan"), -0.1):
        with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
            make_periodic(n=4, noise_std=noise_std)
    with pytest.raises(ValueError, match=r"frequency must be a finite range.*\(1.0, 0.2\)"):
        make_periodic(n=4, frequency=(1.0, 0.2))
    with pytest.raises(ValueError, match="amplitude must be a finite range"):
        make_periodic(n=4, amplitude=(0.5, float("nan")))
