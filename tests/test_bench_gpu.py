"""benchmarks/bench_gpu.py: its rows and table (run on the CPU here, without CUDA graphs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
_SPEC = importlib.util.spec_from_file_location("bench_gpu", _PATH)
bench_gpu = sys.modules["bench_gpu"] = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_gpu)


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
