"""The GPU benchmark (``neuralode.bench.gpu``): its rows and table, run on the CPU here
(without CUDA graphs), and as ``neuralode bench --parts gpu``."""

from __future__ import annotations

import torch

from neuralode.bench import gpu as bench_gpu
from neuralode.cli import main


def test_rows_cover_every_loop_with_cuda_graphs_only_on_cuda():
    on_cpu = set(bench_gpu.runners(torch.device("cpu"), compile_step=False))
    on_gpu = set(bench_gpu.runners(torch.device("cuda"), compile_step=True))
    assert {"neuralode", "neuralode device_loop", "neuralode per_sample"} <= on_cpu
    assert not any("cuda_graph" in name for name in on_cpu)
    graphed = {name for name in on_gpu if "cuda_graph" in name}
    assert graphed == {
        "neuralode device_loop + cuda_graph",
        "neuralode per_sample + cuda_graph",
        "neuralode device_loop + cuda_graph + compile_step",
        "neuralode per_sample + cuda_graph + compile_step",
    }


def test_one_system_loops_take_the_same_steps_and_the_table_compares_per_step():
    rows = bench_gpu.run(torch.device("cpu"), batches=(8,), repeats=1, t1=5.0)
    by_name = {row.name: row for row in rows}
    standard = by_name["neuralode"]
    assert standard.steps > 4 and by_name["neuralode device_loop"].steps == standard.steps
    assert by_name["torchdiffeq"].steps == standard.steps  # the same dopri5 and controller
    text = bench_gpu.table(rows)
    assert text.count("\n") == len(rows) + 1
    assert "| 8 | torchdiffeq |" in text and "| 1.00x |" in text


def test_every_row_is_compared_with_torchdiffeqs_answer():
    rows = bench_gpu.run(torch.device("cpu"), batches=(4,), repeats=2, t1=2.0)
    by_name = {row.name: row for row in rows}
    assert by_name["torchdiffeq"].diff == 0.0
    # one system or per sample, every loop solves the same problem to the tolerance
    assert all(row.diff < 1e-4 for row in rows) and by_name["neuralode"].diff > 0
    assert "| max diff of y(t1) |" in bench_gpu.table(rows)


def test_bench_gpu_part_needs_no_torchode_and_writes_its_table(tmp_path, monkeypatch):
    """``neuralode bench --parts gpu`` imports only what that part needs (a GPU machine may
    lack torchode), and writes the table into bench.md."""
    import importlib.util
    import sys

    find_spec = importlib.util.find_spec

    def without_torchode(name, *args):
        return None if name == "torchode" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_torchode)
    monkeypatch.setitem(sys.modules, "torchode", None)  # importing it raises ImportError
    import neuralode.bench

    for name in ("core", "per_sample"):  # imported afresh if asked for: they need torchode
        monkeypatch.delitem(sys.modules, f"neuralode.bench.{name}", raising=False)
        monkeypatch.delattr(neuralode.bench, name, raising=False)
    assert main(["bench", "--parts", "gpu", "--repeats", "1", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "bench.md").read_text()
    assert "### Time per step on CPU" in report and "| 16 | neuralode device_loop |" in report
    assert "torchode" not in report.split("###", 1)[1]  # left out: "not installed"
