"""The compiled whole solve's backend: its float32 tanh and its fused small matrix products
equal torch's to round-off, and a tanh MLP solved with them equals the eager solve."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode import _whole_linear
from neuralode._whole_backend import (
    SMALL_ROWS,
    define_operators,
    materialize,
    small_addmm,
    small_mm,
    tanh_float32,
    whole_solve_backend,
)
from neuralode._whole_tanh import tanh_rational

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def float32_grid() -> torch.Tensor:
    """Every 97th float32 in [-20, 20] (by bit pattern) and the special values."""
    bits = np.arange(0, 0x41A00000, 97, dtype=np.uint32)
    x = torch.from_numpy(bits.view(np.float32).copy())
    specials = torch.tensor([0.0, -0.0, 1e-30, -1e-45, 0.625, -0.625, 20.0, 100.0, -3e38])
    return torch.cat([x, -x, specials])


def ulps(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|y - tanh(x)| in units of the float32 spacing at tanh(x) (exact tanh: float64)."""
    exact = torch.tanh(x.double())
    spacing = np.spacing(exact.abs().float().numpy()).astype(np.float64)
    return (y.double() - exact).abs() / torch.from_numpy(spacing).clamp_min(2.0**-149)


def test_rational_tanh_is_within_its_ulp_and_keeps_the_special_values():
    x = float32_grid()
    y = tanh_rational(x)  # the same arithmetic as in the graph, run eagerly
    assert y.dtype == torch.float32
    assert ulps(y, x).max() <= 6.5
    assert y.abs().max() <= 1.0
    special = tanh_rational(torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")]))
    assert special[:4].tolist() == [0.0, 0.0, 1.0, -1.0] and torch.isnan(special[4])
    assert not torch.signbit(special[0]) and torch.signbit(special[1])  # tanh(-0) = -0


def test_tanh_float32_is_the_rational_form_on_any_rows():
    gen = torch.Generator().manual_seed(0)
    for x in (torch.randn(SMALL_ROWS, 8, generator=gen), torch.randn(300, 8), torch.tensor(0.3)):
        assert torch.equal(tanh_float32(x), tanh_rational(x))


def test_tanh_float32_leaves_other_dtypes_to_torch():
    assert tanh_float32(torch.ones(3, dtype=torch.float64)) is NotImplemented
    assert tanh_float32(torch.ones(3, dtype=torch.bfloat16)) is NotImplemented


@needs_compiler
@pytest.mark.parametrize("contract", ["off", "fast"])
def test_compiled_tanh_is_the_fused_one_in_float32_and_torchs_in_float64(contract, monkeypatch):
    """Compiled with separate multiplies and adds, the float32 tanh is the eager rational
    form to round-off; with fused multiply-adds (the backend's default) it rounds
    differently and keeps the form's error bound, and float64 keeps torch's tanh."""
    import neuralode._whole_backend as backend

    monkeypatch.setattr(backend, "FLOATING_POINT_CONTRACT", contract)
    torch._dynamo.reset()
    x = float32_grid()
    compiled = torch.compile(torch.tanh, backend=whole_solve_backend, dynamic=False)
    y = compiled(x)
    assert ulps(y, x).max() <= 6.5
    if contract == "off":
        torch.testing.assert_close(y, tanh_rational(x), rtol=2.5e-7, atol=0)
    assert torch.signbit(y[x.shape[0] - 8])  # tanh(-0.0) = -0.0
    if contract == "fast":  # (a graph of its own: once)
        x64 = torch.linspace(-20, 20, 100001, dtype=torch.float64)
        torch.testing.assert_close(compiled(x64), torch.tanh(x64), rtol=1e-15, atol=1e-300)


@pytest.mark.parametrize(
    "rows, inner, columns",
    [(1, 64, 48), (3, 64, 48), (16, 64, 48), (300, 64, 3), (300, 2, 64), (300, 3, 5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_and_thin_matrix_products_equal_torchs_to_round_off(rows, inner, columns, dtype):
    gen = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, inner, generator=gen, dtype=dtype)
    b = torch.randn(inner, columns, generator=gen, dtype=dtype)
    bias = torch.randn(columns, generator=gen, dtype=dtype)
    assert small_mm(a, b) is not NotImplemented
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(small_mm(a, b), a @ b, **tol)
    torch.testing.assert_close(small_addmm(bias, a, b), torch.addmm(bias, a, b), **tol)
    torch.testing.assert_close(
        small_addmm(bias, a, b, beta=0.5, alpha=-2.0),
        torch.addmm(bias, a, b, beta=0.5, alpha=-2.0),
        **tol,
    )
    nan_bias = torch.full_like(bias, torch.nan)  # beta = 0 ignores the bias, as addmm does
    torch.testing.assert_close(small_addmm(nan_bias, a, b, beta=0), a @ b, **tol)


def test_large_or_other_matrix_products_keep_inductors_lowering(monkeypatch):
    monkeypatch.setattr(_whole_linear, "vector_width", lambda: 0)  # (no linear kernel)
    a, b, bias = torch.ones(17, 8), torch.ones(8, 8), torch.ones(8)
    assert small_mm(a, b) is NotImplemented  # more rows than SMALL_ROWS, not thin
    assert small_mm(torch.ones(1, 512), torch.ones(512, 512)) is NotImplemented  # too many
    ints = torch.ones(2, 3, dtype=torch.int64), torch.ones(3, 2, dtype=torch.int64)
    assert small_mm(*ints) is NotImplemented
    assert small_addmm(torch.ones(2, dtype=torch.int64), *ints) is NotImplemented
    assert small_addmm(bias.double(), a, b) is NotImplemented  # (mixed dtypes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_addmm_is_mm_and_the_bias_exactly(dtype, monkeypatch):
    """A large product with a bias where the linear kernel does not serve: ATen's mm, and
    the bias subtracted with its sign changed, which is the addition exactly (signed zeros,
    infinities and NaN included)."""
    monkeypatch.setattr(_whole_linear, "vector_width", lambda: 0)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(40, 24, generator=gen, dtype=dtype)
    b = torch.randn(24, 8, generator=gen, dtype=dtype)
    bias = torch.tensor([0.0, -0.0, 1.5, -2.0, float("inf"), -float("inf"), 3.0, 1e-30])
    bias = bias.to(dtype)
    assert torch.equal(small_addmm(bias, a, b), a @ b + bias)
    zeros, signed = torch.zeros(24, 8, dtype=dtype), bias.clone()
    signed[2:] = 0.0
    product = a @ zeros  # (+0 everywhere)
    assert torch.equal(small_addmm(signed, a, zeros).signbit(), (product + signed).signbit())
    nan = torch.full((8,), torch.nan, dtype=dtype)
    assert small_addmm(nan, a, b).isnan().all()
    torch.testing.assert_close(
        small_addmm(bias, a, b, beta=0.5, alpha=-2.0),
        torch.addmm(bias, a, b, beta=0.5, alpha=-2.0),
    )
    torch.testing.assert_close(small_addmm(nan, a, b, beta=0), a @ b)


@needs_compiler
@pytest.mark.parametrize("batch", [1, pytest.param(32, marks=pytest.mark.slow)])
def test_compiled_tanh_mlp_solve_equals_the_eager_solve_and_reuses_its_graph(batch):
    """float32 tanh MLP (fused products at batch 1, ATen's at 32; the fused tanh in both):
    compile=True takes the eager steps and gives its outputs to round-off; a new y0 and new
    weights of the same shapes reuse the graph."""
    from torch._dynamo.utils import counters

    torch.manual_seed(10)  # (a solve whose step count rounding does not change)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
        torch.nn.Linear(16, 2),
    )  # fmt: skip
    y0 = torch.randn(batch, 2)
    ts = torch.linspace(0.0, 1.0, 3)
    kwargs = dict(controller=no.PIController(1e-6, 1e-8))

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(y)

    with torch.no_grad():
        eager = no.solve(f, y0, ts, **kwargs)
        compiled = no.solve(f, y0, ts, compile=True, **kwargs)
        graphs = counters["stats"]["unique_graphs"]
        net[2].weight.mul_(0.9)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = no.solve(f, -y0, ts, compile=True, **kwargs)
        reference = no.solve(f, -y0, ts, **kwargs)
    assert counters["stats"]["unique_graphs"] == graphs
    assert compiled.stats.n_steps == eager.stats.n_steps
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.ys, reference.ys, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@needs_compiler
def test_backsolve_of_a_compiled_tanh_mlp_equals_the_eager_backsolve():
    """compile=True with Backsolve(): the forward and backward solves run as graphs of the
    whole-solve backend (its tanh inside the vector-Jacobian products too) and give the
    eager Backsolve gradients to round-off."""

    class Field(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
            )

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.net(y)

    torch.manual_seed(0)
    field = Field()
    y0 = torch.randn(4, 2)
    ts = torch.linspace(0.0, 1.0, 3)
    grads = []
    for options in ({}, {"compile": True}):
        sol = no.solve(field, y0, ts, controller=no.PIController(1e-6, 1e-8),
                       gradient=no.Backsolve(), **options)  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys.square().sum(), list(field.parameters())))
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_backend_names_its_lowerings_in_the_cache_key(monkeypatch):
    """The decompositions are not part of torch's cache keys: the backend tags them (one tag
    per lowering settings, the user's own tag kept), and leaves tanh to inductor's
    approximation when the user switched it on."""
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.config as inductor_config

    import neuralode._whole_backend as backend

    seen = []

    def record(gm, inputs, config_patches, decompositions):
        seen.append((torch.compiler.config.cache_key_tag, decompositions, config_patches))
        return gm

    monkeypatch.setattr(compile_fx, "compile_fx", record)
    gm = torch.fx.symbolic_trace(torch.nn.Tanh())
    aten = torch.ops.aten
    with torch.compiler.config.patch(cache_key_tag="mine"):
        whole_solve_backend(gm, [])
        monkeypatch.setattr(backend, "SMALL_ROWS", 0)
        whole_solve_backend(gm, [])
        with inductor_config.patch({"cpp.use_decompose_tanh": True}):
            whole_solve_backend(gm, [])
    tags = [tag for tag, _, _ in seen]
    assert all(tag.startswith("mine|neuralode-whole-solve-") for tag in tags)
    assert len(set(tags)) == 3
    assert seen[0][1][aten.tanh.default] is tanh_float32
    assert seen[0][1][aten.addmm.default] is small_addmm
    assert aten.tanh.default not in seen[2][1] or seen[2][1][aten.tanh.default] is not tanh_float32
    patches = dict(seen[0][2])
    fuse = patches.pop("post_grad_custom_post_pass")
    assert patches == {"cpp_wrapper": True, "cpp.enable_floating_point_contract_flag": "fast"}
    assert fuse.uuid() == seen[1][2]["post_grad_custom_post_pass"].uuid()
    assert torch.compiler.config.cache_key_tag == ""


@needs_compiler
def test_backend_fuses_products_into_sums():
    """a * b + c with a = b = 1 + 2^-13 and c = -(1 + 2^-12) is 2^-26 exactly; rounding the
    product first (separate multiply and add) gives 0. The backend's kernels use fused
    multiply-adds wherever the CPU has them (inductor's vectorised kernels need AVX2 or
    AVX-512 on x86, which have them)."""
    from torch._inductor import cpu_vec_isa

    if not cpu_vec_isa.pick_vec_isa():
        pytest.skip("inductor compiles scalar kernels here: no fused multiply-add")
    a = torch.full((64,), 1 + 2**-13)
    c = torch.full((64,), -(1 + 2**-12))
    assert torch.equal(a * a + c, torch.zeros(64))  # eager: two roundings
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, b, c: a * b + c, backend=whole_solve_backend, fullgraph=True, dynamic=False
    )
    assert torch.equal(compiled(a, a, c), torch.full((64,), 2.0**-26))


@needs_compiler
def test_rational_tanh_never_exceeds_one_and_is_one_from_its_clamp_on():
    """The rational form has no clamp of its result: every float32 in [4, RATIONAL_CLAMP]
    gives at most 1, eagerly and compiled with fused multiply-adds, and x at or beyond the
    clamp gives exactly 1 (so does -x: -1)."""
    from neuralode._whole_tanh import RATIONAL_CLAMP

    low, high = np.float32(4.0).view(np.uint32), np.float32(RATIONAL_CLAMP).view(np.uint32)
    bits = np.arange(low, high + 1, dtype=np.uint32)
    x = torch.from_numpy(bits[: len(bits) // 64 * 64].view(np.float32).copy())
    x = torch.cat([x, torch.tensor([RATIONAL_CLAMP, 8.5, 20.0, float("inf")] * 16)])
    torch._dynamo.reset()
    compiled = torch.compile(tanh_rational, backend=whole_solve_backend, dynamic=False)
    for y in (tanh_rational(x), compiled(x.reshape(-1, 64)).reshape(-1)):
        assert y.max() <= 1.0
        assert torch.equal(y[-64:], torch.ones(64))
        assert torch.equal(tanh_rational(-x[-64:]), -torch.ones(64))


@needs_compiler
def test_compiled_thin_products_equal_the_eager_mlp():
    """An MLP 2-64-64-2 at 300 rows through the backend give the eager values to round-off;
    the code never calls addmm and copies no bias. The last layer is a thin product (its
    input materialized); where the CPU has AVX2 or AVX-512 the first two layers are
    ``neuralode::linear`` with their tanh, else a thin product and ATen's mm with the bias
    fused after it."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 2),
    )  # fmt: skip
    x = torch.randn(300, 2)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x: net(x * 0.5 + 0.1), backend=whole_solve_backend, fullgraph=True, dynamic=False
    )
    with torch.no_grad():
        result, (code, *_) = run_and_get_code(compiled, x)
        torch.testing.assert_close(result, net(x * 0.5 + 0.1), rtol=1e-5, atol=1e-6)
    if _whole_linear.vector_width():
        assert "aoti_torch_cpu_mm_out(" not in code
        assert code.count("float packed[K * N]") == 2  # (the linear kernel, twice)
        assert "at::vec::clamp(" in code  # (its tanh on the registers)
    else:
        assert code.count("aoti_torch_cpu_mm_out(") == 1
    assert "addmm_out(" not in code and "copy_" not in code


def test_materialize_is_an_identity_with_the_identity_gradient():
    """Eagerly a contiguous copy (the operator may not alias its input), differentiable as
    x; compiled, a contiguous buffer of a transposed input."""
    x = torch.randn(5, 3, requires_grad=True)
    y = materialize(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    (y * torch.arange(3.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(3.0).expand(5, 3))
    transposed = materialize(x.detach().t())
    assert transposed.is_contiguous() and torch.equal(transposed, x.detach().t())


@needs_compiler
def test_compiled_materialize_of_a_transposed_input_is_contiguous():
    x = torch.randn(6, 40)
    torch._dynamo.reset()
    # the operators exist before a graph calling them is traced, as in a solve (its graphs
    # call them only from the backend's decompositions, after it defines them): dynamo
    # cannot trace their definition (``torch.library.Library``)
    define_operators()
    compiled = torch.compile(
        lambda x: materialize(x.t()), backend=whole_solve_backend, fullgraph=True, dynamic=False
    )
    y = compiled(x)
    assert y.is_contiguous() and torch.equal(y, x.t())
