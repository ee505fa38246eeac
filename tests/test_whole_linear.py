"""``neuralode::linear``, the compiled whole solve's fused linear layer: eagerly the
expression it names, compiled equal to it to round-off for every shape it takes (row
blocks and their remainder, any inner size, every column blocking, with and without bias,
its tanh on the registers), non-finite values as torch gives them, on one thread and on
several, and the post-grad pass that folds a tanh into it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from neuralode import _whole_linear
from neuralode._whole_backend import (
    define_operators,
    fuse_linear_activations,
    whole_solve_backend,
)
from neuralode._whole_tanh import tanh_rational

needs_kernel = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++"))
    or not _whole_linear.vector_width(),
    reason="the fused linear kernel needs a C++ compiler and AVX2 or AVX-512",
)


def compiled(fn):
    _whole_linear.define()  # (before dynamo traces a call of the operator)
    torch._dynamo.reset()
    return torch.compile(fn, backend=whole_solve_backend, fullgraph=True, dynamic=False)


def expected(x, weight, bias, activation):
    """The operator's meaning in float64, with the backend's tanh (tanh_rational)."""
    out = torch.nn.functional.linear(
        x.double(), weight.double(), None if bias is None else bias.double()
    )
    return (tanh_rational(out) if activation == "tanh" else out).float()


def test_the_operator_eagerly_is_the_expression_it_names():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(5, 3), torch.randn(4, 3), torch.randn(4)
    linear = torch.nn.functional.linear(x, weight, bias)
    assert torch.equal(_whole_linear.linear(x, weight, bias), linear)
    assert torch.equal(_whole_linear.linear(x, weight, bias, "tanh"), torch.tanh(linear))
    assert torch.equal(_whole_linear.linear(x, weight, None), x @ weight.t())
    with pytest.raises(ValueError, match="activation must be one of"):
        _whole_linear.linear(x, weight, bias, "relu")


def test_eligibility_names_the_shapes_the_kernel_takes(monkeypatch):
    monkeypatch.setattr(_whole_linear, "vector_width", lambda: 16)
    x = torch.randn(300, 64)
    assert _whole_linear.eligible(x, torch.randn(64, 64))
    assert _whole_linear.eligible(x[:, :37], torch.randn(37, 48))
    assert not _whole_linear.eligible(x, torch.randn(64, 40))  # (columns not in vectors)
    assert not _whole_linear.eligible(x, torch.randn(64, 512))  # (weight over MAX_WEIGHT)
    assert not _whole_linear.eligible(x.double(), torch.randn(64, 64).double())
    monkeypatch.setattr(_whole_linear, "vector_width", lambda: 0)
    assert not _whole_linear.eligible(x, torch.randn(64, 64))


@pytest.mark.parametrize("width", [8, 16])
def test_register_blocks_fit_the_registers(width):
    """Accumulators, the weight's vectors and a broadcast within 16 (AVX2) or 32 (AVX-512)
    registers; the block spans as many vectors as the columns allow (at most 4)."""
    registers = 32 if width == 16 else 16
    for columns_in_vectors in range(1, 13):
        rows, vectors = _whole_linear._blocking(columns_in_vectors, width)
        assert columns_in_vectors % vectors == 0
        assert rows * vectors + vectors + 1 <= registers and rows >= 1
        if columns_in_vectors % 4 == 0:
            assert vectors == 4


def test_the_kernel_shares_its_row_blocks_among_threads_only_when_asked():
    sizes = {"rows": "300", "inner": 64, "columns": 64}
    one = _whole_linear.kernel_source(sizes, 16, has_bias=True, activation="tanh")
    two = _whole_linear.kernel_source(sizes, 16, has_bias=True, activation="tanh", threads=2)
    assert "omp" not in one
    assert "#pragma omp parallel for num_threads(2)" in two
    assert "at::vec::clamp(" in one and "Vec::loadu(B + nb" in one
    plain = _whole_linear.kernel_source(sizes, 16, has_bias=False, activation="none")
    assert "clamp" not in plain and "Vec(0.0f)" in plain


# every shape in one compiled graph (one C++ module for the five kernels)
SHAPES = [  # rows, inner, columns, bias, activation
    (300, 64, 64, True, "tanh"),  # row blocks and a remainder of rows
    (17, 37, 48, True, "none"),  # an odd inner size, columns in three vectors
    (40, 5, 32, False, "tanh"),  # columns in two vectors (AVX-512), no bias
    (23, 64, 16, True, "tanh"),  # one vector of columns
    (64, 128, 128, False, "none"),  # two blocks of columns
]


@needs_kernel
def test_compiled_linear_equals_the_expression():
    layers, xs = [], []
    for rows, inner, columns, bias, activation in SHAPES:
        torch.manual_seed(rows + inner + columns)
        x, weight = torch.randn(rows, inner), torch.randn(columns, inner) / inner**0.5
        layers.append((weight, torch.randn(columns) if bias else None, activation))
        xs.append(x)

    def every_layer(*xs):
        return [_whole_linear.linear(x, *layer) for x, layer in zip(xs, layers)]

    with torch.no_grad():
        results = compiled(every_layer)(*xs)
    for result, x, layer, shape in zip(results, xs, layers, SHAPES):
        torch.testing.assert_close(
            result, expected(x, *layer), rtol=2e-6, atol=2e-6, msg=str(shape)
        )


@needs_kernel
def test_compiled_linear_gives_non_finite_values_as_torch():
    """NaN stays NaN through the product and the tanh; +-inf before the tanh gives +-1."""
    x, weight = torch.ones(20, 8), torch.full((32, 8), 0.125)
    bias = torch.zeros(32)
    bias[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
    weight[5, 3] = float("nan")
    with torch.no_grad():
        plain, tanh = compiled(
            lambda x: (
                _whole_linear.linear(x, weight, bias),
                _whole_linear.linear(x, weight, bias, "tanh"),
            )
        )(x)
    reference = torch.nn.functional.linear(x, weight, bias)
    torch.testing.assert_close(plain, reference, equal_nan=True)
    assert tanh[:, 0].isnan().all() and tanh[:, 5].isnan().all()
    assert (tanh[:, 1] == 1).all() and (tanh[:, 2] == -1).all() and (tanh[:, 3] == 1).all()
    torch.testing.assert_close(tanh[:, 6:], torch.tanh(reference[:, 6:]), rtol=0, atol=1e-6)


@needs_kernel
def test_compiled_linear_on_several_threads_equals_one_thread():
    torch.manual_seed(1)
    x, weight, bias = torch.randn(4000, 64), torch.randn(64, 64) / 8, torch.randn(64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            result = compiled(lambda x: _whole_linear.linear(x, weight, bias, "tanh"))(x)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(result, expected(x, weight, bias, "tanh"), rtol=2e-6, atol=2e-6)


def test_the_pass_folds_a_tanh_into_its_linear_and_writes_out_the_others():
    """tanh(linear(x)) with no other user of the linear becomes one linear with tanh; a
    tanh of another value, or of a linear used elsewhere, becomes tanh_rational's ATen
    arithmetic (no neuralode::tanh is left for inductor)."""
    define_operators()
    ops = torch.ops.neuralode

    linear, tanh = ops.linear.default, ops.tanh.default

    def program(x, weight, bias):
        hidden = tanh(linear(x, weight, bias, "none"))
        shared = linear(hidden, weight, bias, "none")
        return tanh(shared) + shared + tanh(x)

    graph = torch.fx.symbolic_trace(program).graph
    for node in graph.nodes:  # (the pass copies each replaced node's meta)
        node.meta["val"] = None
    fuse_linear_activations(graph)
    calls = [node for node in graph.nodes if node.op == "call_function"]
    activations = [node.args[3] for node in calls if node.target is linear]
    assert sorted(activations) == ["none", "tanh"]
    assert not any(node.target is tanh for node in calls)
    assert sum(node.target is torch.ops.aten.div.Tensor for node in calls) == 2

    module = torch.fx.GraphModule({}, graph)
    torch.manual_seed(2)
    x, weight, bias = torch.randn(6, 4), torch.randn(4, 4), torch.randn(4)
    hidden = tanh_rational(torch.nn.functional.linear(x, weight, bias))
    shared = torch.nn.functional.linear(hidden, weight, bias)
    reference = tanh_rational(shared) + shared + tanh_rational(x)
    torch.testing.assert_close(module(x, weight, bias), reference, rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.skipif(
    not _whole_linear.vector_width() or _whole_linear.vector_width() == 8,
    reason="the CPU's own ISA is AVX2 already",
)
def test_the_avx2_kernel_equals_the_expression():
    """With inductor held to AVX2 (ATEN_CPU_CAPABILITY=avx2, 8 lanes, 16 registers) the
    kernel takes other register blocks; a fresh process compiles it."""
    script = (
        "import torch\n"
        "from neuralode import _whole_linear\n"
        "from neuralode._whole_backend import whole_solve_backend\n"
        "from neuralode._whole_tanh import tanh_rational\n"
        "assert _whole_linear.vector_width() == 8\n"
        "_whole_linear.define()\n"
        "torch.manual_seed(0)\n"
        "x, w, b = torch.randn(301, 40), torch.randn(56, 40) / 6, torch.randn(56)\n"
        "f = torch.compile(lambda x: _whole_linear.linear(x, w, b, 'tanh'),\n"
        "                  backend=whole_solve_backend, fullgraph=True, dynamic=False)\n"
        "with torch.no_grad():\n"
        "    out = f(x)\n"
        "ref = tanh_rational(torch.nn.functional.linear(x.double(), w.double(), b.double()))\n"
        "torch.testing.assert_close(out, ref.float(), rtol=2e-6, atol=2e-6)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
