"""Warm calls of ``solve(..., compile=True)`` (``_warm``): after a key's first solve ran as
one graph, a call with the same settings skips the checks that depend only on them, yet
equals the full path (the eager results, the same statistics), notices every changed
setting (a controller changed in place, another ``max_steps``, solver or direction of time)
and still checks every value (y0, the times, the outputs)."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch

import neuralode as no
from neuralode import _warm
from neuralode._term import ODETerm
from neuralode._tree import leaf_spec
from neuralode._validate import all_finite, check_tolerances

# the warm path's keys and checks are the host's and dynamo's: the whole solve's graphs run
# uncompiled by inductor (conftest's whole_solve_traced_only)
pytestmark = [
    pytest.mark.skipif(
        not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
        reason="torch.compile's CPU backend needs a C++ compiler",
    ),
    pytest.mark.usefixtures("whole_solve_traced_only"),
]

TS = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
Y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)


@pytest.fixture(autouse=True)
def room_for_graphs():
    """These tests compile several graphs of one code object; other tests in the process
    may have compiled up to torch's recompile_limit of it already."""
    with torch._dynamo.config.patch(recompile_limit=64):
        yield


def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -1.5 * y + torch.sin(3.0 * t)[..., None]  # (t: 0-dim, or per sample (batch,))


@pytest.fixture
def warm_calls(monkeypatch):
    """The solutions the remembered path returned (``None``: it sent the call the full way)."""
    returned = []
    original = _warm._solve

    def spy(*args):
        solution = original(*args)
        returned.append(solution)
        return solution

    monkeypatch.setattr(_warm, "_solve", spy)
    return returned


def same(warm: no.Solution, full: no.Solution) -> None:
    assert warm.stats.n_steps == full.stats.n_steps
    assert warm.stats.n_accepted == full.stats.n_accepted
    torch.testing.assert_close(warm.ys, full.ys, rtol=1e-9, atol=1e-10)
    assert warm.status.shape == full.status.shape and not warm.status.any()


def test_a_warm_call_equals_the_full_path_with_new_objects_and_values(warm_calls):
    """A new controller object with the same settings, a new y0 and new times: the
    remembered path runs and returns the full path's solution and statistics."""
    with torch.no_grad():
        first = no.solve(decay, Y0, TS, controller=no.PIController(1e-7, 1e-9), compile=True)
        assert not warm_calls  # (the first call of a key goes the full way)
        ts = torch.tensor([0.0, 0.3, 2.0], dtype=torch.float64)
        controller = no.PIController(1e-7, 1e-9)
        with torch._dynamo.config.patch(error_on_recompile=True):  # (y0 itself: no new graph)
            warm = no.solve(decay, -2 * Y0, ts, controller=controller, compile=True)
        assert len(warm_calls) == 1 and warm_calls[0] is warm
        same(warm, no.solve(decay, -2 * Y0, ts, controller=controller))
        again = no.solve(decay, Y0, TS, controller=controller, compile=True)
        # the rows' shape, contiguous with other strides (a transposed column): no new graph
        column = torch.tensor([[0.5], [-0.3]], dtype=torch.float64).T
        assert column.is_contiguous() and column.stride() != (2, 1)
        with torch._dynamo.config.patch(error_on_recompile=True):
            transposed = no.solve(decay, column, TS, controller=controller, compile=True)
        same(transposed, no.solve(decay, column, TS, controller=controller))
    counts = [{k: v for k, v in s.stats.as_dict().items() if k != "status"} for s in (again, first)]
    assert counts[0] == counts[1] and counts[0]["nfe"] > 0 and again.status is not first.status
    assert torch.equal(again.ys, first.ys) and again.ys.shape == (3, 1, 2)


def test_a_controller_changed_in_place_and_other_settings_are_noticed(warm_calls):
    controller = no.PIController(1e-7, 1e-9)
    with torch.no_grad():
        tight = no.solve(decay, Y0, TS, controller=controller, compile=True)
        before = len(warm_calls)
        controller.rtol, controller.atol = 1e-4, 1e-6
        loose = no.solve(decay, Y0, TS, controller=controller, compile=True)
        same(loose, no.solve(decay, Y0, TS, controller=controller))
        assert loose.stats.n_steps < tight.stats.n_steps
        with pytest.raises(no.MaxStepsError):
            no.solve(decay, Y0, TS, controller=controller, compile=True, max_steps=2)
        other = no.solve(decay, Y0, TS, controller=controller, solver=no.Tsit5(), compile=True)
        same(other, no.solve(decay, Y0, TS, controller=controller, solver=no.Tsit5()))
    assert len(warm_calls) == before  # (each changed setting is another key: the full path)


def test_every_warm_call_checks_its_values(warm_calls):
    """A non-finite y0, bad times: the full path's errors; the other direction of time:
    its own plan, the full path's result."""
    with torch.no_grad():
        no.solve(decay, Y0, TS, compile=True)
        with pytest.raises(no.NonFiniteError, match="y0 contains NaN or inf"):
            no.solve(decay, torch.full_like(Y0, math.nan), TS, compile=True)
        with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
            no.solve(decay, Y0, TS[[0, 2, 1]], compile=True)
        with pytest.raises(ValueError, match="NaN or inf"):
            no.solve(
                decay, Y0, torch.tensor([0.0, 0.5, math.inf], dtype=torch.float64), compile=True
            )
        with pytest.raises(no.NonFiniteError, match="y0 contains NaN or inf"):
            no.solve(decay, torch.full_like(Y0, -math.inf), TS, compile=True)
        backwards = no.solve(decay, Y0, TS.flip(0), compile=True)
        same(backwards, no.solve(decay, Y0, TS.flip(0)))
        assert warm_calls[-1] is backwards
        same(no.solve(decay, Y0, TS.flip(0), compile=True), backwards)


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_graph_checks_y0_and_the_outputs_on_warm_calls(warm_calls, per_sample):
    """The graph's own finiteness checks (no host check before or after it): a y0 with
    inf where f is finite (tanh), and a solution that overflows to inf where f does not
    (its error estimates are 0 against an infinite scale: the steps go on to the end),
    raise the full path's errors. An f returning y itself runs as one graph."""

    def squashed(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y)

    def growth(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def huge(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, 1e38)

    y0 = torch.tensor([[0.5, -0.3], [2.0, 1.0]], dtype=torch.float32)
    ts = torch.tensor([0.0, 1.0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", ".*whole solve")  # (no fallback to compiled steps)
        for f, start in ((squashed, y0), (growth, y0), (huge, y0 * 1e38)):
            assert no.solve(f, start, ts, per_sample=per_sample, compile=True).ys.isfinite().all()
        assert len(warm_calls) == 0
        with pytest.raises(no.NonFiniteError, match="y0 contains NaN or inf"):
            no.solve(squashed, y0 + math.inf, ts, per_sample=per_sample, compile=True)
        with pytest.raises(no.NonFiniteError, match="overflows torch.float32 to inf") as full:
            no.solve(huge, (y0 + 1) * 1e38, ts, per_sample=per_sample)
        with pytest.raises(no.NonFiniteError) as warm:
            no.solve(huge, (y0 + 1) * 1e38, ts, per_sample=per_sample, compile=True)
        assert str(warm.value) == str(full.value)
        assert no.solve(growth, -y0, ts, per_sample=per_sample, compile=True).succeeded
    assert len(warm_calls) == 1


def test_per_sample_warm_calls_equal_the_full_path(warm_calls):
    y0 = torch.tensor([[0.5, -0.3], [2.0, 1.0], [-1.0, 0.1]], dtype=torch.float64)
    with torch.no_grad():
        no.solve(decay, y0, TS, per_sample=True, compile=True)
        warm = no.solve(decay, 3 * y0, TS, per_sample=True, compile=True)
        full = no.solve(decay, 3 * y0, TS, per_sample=True)
    assert warm_calls == [warm]
    same(warm, full)
    assert torch.equal(warm.stats.sample_steps, full.stats.sample_steps)
    assert warm.stats.rows_evaluated == 3 * warm.stats.nfe


def test_tolerances_below_the_resolution_warn_on_every_call():
    """rtol and atol below float64's resolution (f = 0: every step meets them): each call
    warns, so no key is kept for it."""

    def still(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.0 * y

    controller = no.PIController(1e-19, 1e-19)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            no.solve(still, Y0, TS, controller=controller, compile=True)
    assert sum("below the resolution" in str(w.message) for w in caught) == 2
    assert not any(key[0] is still for key in _warm._ENTRIES)


def test_calls_that_are_not_keyed():
    """Grad mode, a tensor subclass, a bool max_steps, ``skip_finished``, tensor tolerances:
    no key; each setting in the key."""
    key = _warm.warm_key
    with torch.enable_grad():
        assert key(decay, Y0, TS, None, None, False, None) is None
    with torch.no_grad():
        assert key(decay, Y0, TS, None, None, False, None) is not None
        assert key(decay, Y0, TS, None, None, False, 5) != key(decay, Y0, TS, None, None, False, 6)
        assert key(decay, Y0, TS, None, None, False, True) is None  # (True == 1)
        assert key(decay, Y0, TS, None, None, "skip_finished", None) is None
        assert key(decay, torch.nn.Parameter(Y0), TS, None, None, False, None) is None
        tensor_rtol = no.PIController(torch.tensor(1e-6), 1e-8)
        assert key(decay, Y0, TS, None, tensor_rtol, False, None) is None
        controller = no.PIController(1e-6, 1e-8)
        before = key(decay, Y0, TS, None, controller, False, None)
        controller.safety = 0.8
        assert key(decay, Y0, TS, None, controller, False, None) != before
        assert key(decay, Y0.float(), TS, None, None, False, None) != key(
            decay, Y0, TS, None, None, False, None
        )


def test_all_finite_on_few_and_many_entries():
    for n in (2, 64, 65):
        x = torch.ones(n, dtype=torch.float64)
        assert all_finite(x) and all_finite(x.reshape(-1, 1))
        for bad in (math.nan, math.inf, -math.inf):
            y = x.clone()
            y[-1] = bad
            assert not all_finite(y) and not all_finite(y.reshape(-1, 1))
    big = torch.full((2,), 1.7e308, dtype=torch.float64)  # finite, its sum is not
    assert all_finite(big)
    assert not all_finite(torch.tensor([1.0, complex(0.0, math.nan)]))
    assert all_finite(torch.tensor([1.0, 2.0], dtype=torch.float16))


def test_check_tolerances_says_whether_the_dtype_alone_decides():
    y0 = torch.ones(2, dtype=torch.float64)
    assert check_tolerances(no.PIController(1e-6, 1e-8), y0)
    assert check_tolerances(no.PIController(1e-6, 1e-8), y0.to(torch.complex128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not check_tolerances(no.PIController(1e-19, 1e-19), y0)
    assert not check_tolerances(no.PIController(1e-19, 1.0), y0)  # (atol decides, at y0)


def test_a_fresh_term_counts_and_checks_anew():
    spec = leaf_spec(torch.Size([2]))
    term = ODETerm(lambda t, y: -y, spec, torch.ones(2))
    term(0.0, torch.ones(2))
    fresh = term.fresh()
    assert (term.nfe, term._checked) == (1, True)
    assert (fresh.nfe, fresh._checked, fresh._buffers) == (0, False, {})
    assert fresh._buffers is not term._buffers and fresh.func is term.func


def test_a_graph_that_cannot_run_keeps_no_key():
    """Past torch's recompile limit the whole solve warns and compiles each step: no key
    is kept for it, so each later call warns again and returns the eager result."""
    fields = [lambda t, y, k=k: -k * y for k in (4.0, 5.0)]
    with torch._dynamo.config.patch(recompile_limit=1), torch.no_grad():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for f in fields:  # (the first may compile: one graph is within the limit)
                no.solve(f, Y0, TS, compile=True)
            before = len(caught)
            for _ in range(2):
                same(no.solve(fields[1], Y0, TS, compile=True), no.solve(fields[1], Y0, TS))
    assert [str(w.message).count("recompile_limit") > 0 for w in caught[before:]] == [True] * 2
    assert not any(key[0] is fields[1] for key in _warm._ENTRIES)
