"""``neuralode bench --parts diffrax``: the plumbing without jax (interpreter discovery, the
note when there is none, the problems' export to the worker), and one small run where an
interpreter with jax and diffrax is named by ``NEURALODE_DIFFRAX_PYTHON`` or is this one."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")

from neuralode.bench import core, diffrax_peer  # noqa: E402
from neuralode.bench.diffrax_worker import load_problems, mlp_numpy, mlp_weights  # noqa: E402
from neuralode.cli import main  # noqa: E402

HAS_DIFFRAX = all(importlib.util.find_spec(name) for name in ("jax", "diffrax"))


def test_export_round_trips_the_weights_and_problems(tmp_path):
    path = tmp_path / "problems.npz"
    diffrax_peer.export_problems(path, (1, 4))
    arrays = load_problems(str(path))
    assert {"mlp_y0_1", "mlp_y0_4", f"mlp_y0_{diffrax_peer.GRAD_BATCH}"} <= set(arrays)
    for batch in (1, 4):
        problem = core.mlp_problem(batch)
        y0 = arrays[f"mlp_y0_{batch}"]
        assert y0.dtype == np.float32 and np.array_equal(y0, problem.y0.numpy())
        with torch.no_grad():
            expected = problem.f(torch.tensor(0.0), problem.y0).numpy()
        np.testing.assert_allclose(mlp_numpy(mlp_weights(arrays), y0), expected, atol=1e-6)
    vdp = core.vdp_problem(diffrax_peer.VDP_BATCH)
    mu = arrays["vdp_mu"]
    assert mu.dtype == np.float64 and (mu[0], mu[-1], len(mu)) == (1.0, 25.0, 256)
    assert np.array_equal(arrays["vdp_y0"], vdp.y0.numpy())


def test_without_an_interpreter_the_section_is_a_note(monkeypatch):
    monkeypatch.delenv(diffrax_peer.ENV_VAR, raising=False)
    monkeypatch.setattr(diffrax_peer.importlib.util, "find_spec", lambda name: None)
    python, note = diffrax_peer.find_python(None)
    assert python is None and "--diffrax-python" in note and diffrax_peer.ENV_VAR in note
    text = diffrax_peer.section(python, note, (1,), 1)
    assert note in text and "|" not in text  # no table


def test_a_named_interpreter_without_diffrax_is_refused(monkeypatch, capsys):
    with pytest.raises(ValueError, match="cannot be run"):
        diffrax_peer.find_python("/nonexistent/python")
    monkeypatch.setenv(diffrax_peer.ENV_VAR, "/nonexistent/python")
    with pytest.raises(ValueError, match=diffrax_peer.ENV_VAR):
        diffrax_peer.find_python(None)
    if not HAS_DIFFRAX:
        with pytest.raises(ValueError, match="cannot import jax and diffrax"):
            diffrax_peer.find_python(sys.executable)
    monkeypatch.delenv(diffrax_peer.ENV_VAR)
    argv = ["bench", "--parts", "diffrax", "--diffrax-python", "/nonexistent/python"]
    assert main(argv) == 2
    assert "--diffrax-python '/nonexistent/python' cannot be run" in capsys.readouterr().err


@pytest.mark.skipif(HAS_DIFFRAX, reason="this interpreter has diffrax: the part would run")
def test_bench_writes_the_note_when_diffrax_is_absent(monkeypatch, tmp_path):
    monkeypatch.delenv(diffrax_peer.ENV_VAR, raising=False)
    assert main(["bench", "--parts", "diffrax", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "bench.md").read_text()
    assert "neuralode vs diffrax" in report and "diffrax was not run" in report


def _interpreter() -> str | None:
    return os.environ.get(diffrax_peer.ENV_VAR) or (sys.executable if HAS_DIFFRAX else None)


@pytest.mark.slow  # about 30 s: jax compiles six solves
@pytest.mark.skipif(_interpreter() is None, reason="no interpreter with jax and diffrax")
def test_diffrax_solves_the_same_problems():
    python, versions = diffrax_peer.find_python(_interpreter())
    assert "diffrax" in versions
    rows, theirs = diffrax_peer.run(python, (1,), repeats=1, block_seconds=0.0, compiled=False)
    by = {(r.case, r.library): r for r in rows}
    for case in ("mlp forward 1", "vdp one system", "vdp per sample"):
        assert theirs[case]["dtype"] == ("float32" if case.startswith("mlp") else "float64")
        for library in ("neuralode", "diffrax"):
            assert by[(case, library)].error < (1e-6 if case.startswith("mlp") else 1e-3)
    # per sample both libraries take each sample's own steps: the slowest sample alike
    ours, theirs_steps = by[("vdp per sample", "neuralode")], by[("vdp per sample", "diffrax")]
    assert ours.steps.split(",")[0] == theirs_steps.steps.split(",")[0]
    for case in ("mlp gradient backsolve", "mlp gradient direct / recursive checkpoint"):
        for library in ("neuralode", "diffrax"):  # against diffrax's discrete gradient
            assert by[(case, library)].error < 1e-5
    assert "| vdp per sample | diffrax |" in diffrax_peer.table(rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_a_device_without_cuda_is_refused_before_anything_runs(tmp_path, capsys):
    for device, message in (("cuda", "torch sees no CUDA devices here"), ("tpu", "not a device")):
        argv = ["bench", "--parts", "diffrax", "--device", device, "--out", str(tmp_path)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bench.md").exists()
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        diffrax_peer.run(sys.executable, (1,), device="cuda")


def test_the_gpu_rows_are_the_cpu_rows_and_cuda_graphs():
    """On a GPU a third neuralode row replays each step as a CUDA graph: every forward case
    and Backsolve's gradient (its forward solve records no graph), not Direct's."""
    assert diffrax_peer.GPU_VARIANTS == {
        **diffrax_peer.VARIANTS,
        "neuralode cuda_graph": "cuda_graph",
    }
    assert diffrax_peer._ours("mlp gradient recursive checkpoint", "cuda_graph") is None
    for case in ("mlp forward 1", "vdp one system", "vdp per sample", "mlp gradient backsolve"):
        assert callable(diffrax_peer._ours(case, "cuda_graph"))
    value, steps = diffrax_peer._ours("mlp forward 1", "eager", "cpu")()
    np.testing.assert_allclose(value.numpy(), core.reference(core.mlp_problem(1)), atol=1e-5)
