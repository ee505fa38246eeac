"""Count arguments (numbers of steps, iterations, orders, depths, files) take NumPy integers
as the ints they stand for, are stored as plain Python ints, and still refuse bools and
floats with an error naming the argument."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode import cde, pde
from neuralode.data import load_physionet
from neuralode.solvers import ExplicitAdams, ImplicitAdams, Radau


def _decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


def test_solve_max_steps_takes_numpy_integers() -> None:
    y0, ts = torch.ones(2, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)
    plain = no.solve(_decay, y0, ts, max_steps=100)
    for value in (np.int64(100), np.int32(100), np.uint16(100)):
        torch.testing.assert_close(no.solve(_decay, y0, ts, max_steps=value).ys, plain.ys)
    with pytest.raises(no.MaxStepsError, match=r"reached max_steps=2 at"):
        no.solve(_decay, y0, ts, max_steps=np.int64(2))


@pytest.mark.parametrize("value", [True, 100.0, np.float64(100.0), "100", 0, np.int64(-3)])
def test_solve_max_steps_refuses_non_counts(value: object) -> None:
    y0, ts = torch.ones(2), torch.linspace(0, 1, 3)
    with pytest.raises(ValueError, match=r"max_steps must be a positive integer or None, got"):
        no.solve(_decay, y0, ts, max_steps=value)


def test_adams_counts_take_numpy_integers_as_plain_ints() -> None:
    explicit = ExplicitAdams(max_order=np.int64(3))
    implicit = ImplicitAdams(max_order=np.int32(5), max_iters=np.int64(2))
    assert (explicit.max_order, implicit.max_order, implicit.max_iters) == (3, 5, 2)
    assert type(explicit.max_order) is int and type(implicit.max_order) is int
    assert type(implicit.max_iters) is int
    y0, ts = torch.ones(1, dtype=torch.float64), torch.linspace(0, 1, 2, dtype=torch.float64)
    ys = no.solve(_decay, y0, ts, solver=ImplicitAdams(max_order=np.int64(4))).ys
    assert float(ys[-1, 0]) == pytest.approx(math.exp(-1), rel=1e-4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ExplicitAdams(max_order=True), "max_order must be an integer >= 1, got True"),
        (lambda: ExplicitAdams(max_order=3.0), "max_order must be an integer >= 1, got 3.0"),
        (lambda: ExplicitAdams(max_order=np.int64(13)), r"max_order must be an integer in \[1, 12"),
        (lambda: ImplicitAdams(max_iters=2.0), "max_iters must be an integer >= 1, got 2.0"),
        (lambda: ImplicitAdams(max_iters=np.int64(0)), "max_iters must be an integer >= 1"),
    ],
)
def test_adams_counts_refuse_non_counts(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_implicit_rk_counts_are_stored_as_plain_ints() -> None:
    solver = Radau(max_iters=np.int64(5), batch_size=np.int32(2), krylov_dim=np.int64(7))
    assert (solver.max_iters, solver.batch_size, solver.krylov_dim) == (5, 2, 7)
    assert all(type(v) is int for v in (solver.max_iters, solver.batch_size, solver.krylov_dim))


def test_spectral_derivative_order_takes_numpy_integers() -> None:
    grid = pde.Grid((32,), lengths=(2 * math.pi,))
    x = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32)
    second = pde.spectral_derivative(torch.sin(x), grid, n=np.int64(2))
    torch.testing.assert_close(second, -torch.sin(x))
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match=rf"n must be an integer >= 1, got {bad!r}"):
            pde.spectral_derivative(torch.sin(x), grid, n=bad)


def test_log_signature_depth_and_channels_take_numpy_integers() -> None:
    assert cde.logsignature_channels(np.int64(2), np.int64(3)) == 5
    assert cde.lyndon_words(np.int32(2), np.int64(2)) == [(0,), (1,), (0, 1)]
    path = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(cde.signature(path, np.int64(2)), cde.signature(path, 2))
    torch.testing.assert_close(cde.logsignature(path, np.int64(2)), cde.logsignature(path, 2))
    for bad in (True, 2.0, np.float64(2.0)):
        with pytest.raises(ValueError, match="depth must be an int of at least 1"):
            cde.logsignature(path, bad)
        with pytest.raises(ValueError, match="channels must be an int of at least 1"):
            cde.logsignature_channels(bad, 2)


def test_physionet_limit_takes_numpy_integers(tmp_path: Path) -> None:
    for record in (132539, 132540):
        rows = ["Time,Parameter,Value", f"00:00,RecordID,{record}", "00:07,HR,73"]
        (tmp_path / f"{record}.txt").write_text("\n".join(rows) + "\n")
    data = load_physionet(tmp_path, normalize=False, limit=np.int64(1))
    assert [r.record_id for r in data.records] == ["132539"]
    for bad in (True, 1.0):
        with pytest.raises(ValueError, match="limit must be a positive integer or None"):
            load_physionet(tmp_path, limit=bad)
