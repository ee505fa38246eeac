"""The torch.compile backend of the compiled whole solve (``compile=True``).

Inductor with its C++ wrapper (the loop's kernels called from C++), and, on the CPU, two
of its ATen operations lowered differently inside these graphs only (never globally, never
in the user's own compiled code):

- **float32 tanh** (``tanh_float32``): a rational function that inductor fuses into one
  vectorised loop instead of SLEEF's ``tanhf`` (``_whole_tanh``, where its accuracy is
  stated); float64 and the other dtypes keep torch's lowering.
- **small matrix products** (``small_addmm``, ``small_mm``). Inductor calls ATen's
  ``addmm`` for every matrix product (an allocation and a library call each, inside every
  loop iteration). With at most ``SMALL_ROWS`` rows and ``SMALL_SIZE`` multiplications
  (e.g. an MLP layer of width 64 at batch 16) the product becomes a fused reduction of
  products instead, which inductor merges with the bias, the activation and the stage
  arithmetic around it: a batch-1 MLP solve's loop runs in about half the time. The
  sums are the same up to their order (round-off). A ``mat1`` with more than ``THIN``
  columns is ``materialize``d first (below): inductor would otherwise inline the expression
  computing it (an activation such as the tanh) into the product's reduction and compute
  it again for every output column (2.3 times the whole batch-16 solve).
- **thin matrix products** (the same two functions). With more rows but at most ``THIN``
  columns in ``mat2`` (an MLP's last layer on a 2-dimensional state) the product is a
  reduction of products over each row of ``mat1``, ``materialize``d first (an identity
  that inductor computes into a buffer of its own) so that the expression which computes
  it (the activation) is not computed again for every output column. ``addmm`` handles
  this shape badly: (1024, 64) x (64, 2) takes about a fifth of the (1024, 64) x (64, 64)
  product's time for a thirty-second of its arithmetic. With at most ``THIN`` columns in
  ``mat1`` (an MLP's first layer) where the linear kernel below does not serve it (its
  tanh costs less there) the product is a sum of that many broadcast products of
  a column of the ``materialize``d ``mat1`` (a Runge-Kutta stage, computed once) and a
  row of the ``materialize``d ``mat2`` (a contiguous copy of the transposed weight: a
  vector load per row instead of a gather), which inductor fuses with the bias and the
  activation after it.
- **larger matrix products** (the same two functions, and a thin ``mat1``) of float32 on
  an x86 CPU with AVX2 or AVX-512 become ``neuralode::linear`` (``_whole_linear``): a C++
  kernel generated into the graph that accumulates blocks of outputs in vector registers,
  the bias included; the post-grad pass ``fuse_linear_activations`` folds a tanh that
  reads only the product into the kernel, computed on the registers before they are
  stored. Other products stay ATen's (MKL's) ``mm``; with a bias, ``addmm`` becomes
  ``mm`` and the bias subtracted with its sign changed, which inductor fuses into the loop
  that reads the product (the activation) instead of copying the bias into the output
  before the product. (``x - (-b)`` is ``x + b`` exactly; an addition would be turned
  back into ``addmm`` by inductor's post-grad patterns.)

The float32 tanh reaches inductor's graph as the operator ``neuralode::tanh``; the
post-grad pass folds it into the linear layer before it or writes it out as
``tanh_rational``'s ATen arithmetic.

The thin last layer makes a batch-256 MLP solve take about 0.92 of its time, a batch-1024
one 0.90; the thin first layer and ``mm`` without its bias copy then 0.92 and 0.94 of what
remains (BENCHMARKS.md).

Every kernel of these graphs is compiled with ``-ffp-contract=fast``
(``FLOATING_POINT_CONTRACT``): the C++ compiler fuses a product and the sum that uses it into
one fused multiply-add, rounded once instead of twice. The polynomials of the tanh, the
fused products' reductions and the stage combinations take fewer instructions on a CPU with
FMA: an MLP solve at batch 16, 256 or 1024 takes about 0.92 of its time without them, with
the same steps (BENCHMARKS.md). Results differ from torch's eager arithmetic by round-off,
as fused kernels' do anyway; inductor's default is ``off``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch

from . import _whole_linear, _whole_tanh
from ._whole_tanh import tanh_rational, write_tanh_rational

SMALL_ROWS = 16  # matrix products with at most this many rows are fused...
SMALL_SIZE = 16 * 64 * 64  # ...and at most this many multiplications
THIN = 4  # larger products with at most this many columns (in mat2) are fused too
_FUSED_DTYPES = (torch.float32, torch.float64)
FLOATING_POINT_CONTRACT = "fast"  # the C++ compiler's -ffp-contract: products fused into sums


def tanh_float32(x: torch.Tensor) -> Any:
    """tanh of a float32 CPU tensor as fused arithmetic (``tanh_rational`` through the
    operator ``neuralode::tanh``, see the module); ``NotImplemented`` (torch's own
    lowering) for other dtypes and devices."""
    if x.dtype != torch.float32 or x.device.type != "cpu":
        return NotImplemented
    define_operators()
    return torch.ops.neuralode.tanh(x)


def _fused(mat1: torch.Tensor, mat2: torch.Tensor, thin_first: bool = True) -> Any:
    """``mat1 @ mat2`` as fused arithmetic where small or thin (see the module; a thin
    ``mat1`` only with ``thin_first``); ``None`` for another lowering."""
    if mat1.device.type != "cpu" or mat1.dtype not in _FUSED_DTYPES or mat2.dtype != mat1.dtype:
        return None
    rows, inner = mat1.shape
    columns = mat2.shape[1]
    if rows <= SMALL_ROWS and rows * inner * columns <= SMALL_SIZE:
        if inner > THIN:
            mat1 = materialize(mat1)
        return (mat1[:, :, None] * mat2[None]).sum(1)
    if columns <= THIN:
        return (materialize(mat1)[:, None, :] * mat2.t()[None]).sum(2)
    if inner <= THIN and thin_first:
        mat1, mat2 = materialize(mat1), materialize(mat2)
        product = mat1[:, :1] * mat2[0]
        for k in range(1, inner):
            product = product + mat1[:, k : k + 1] * mat2[k]
        return product
    return None


def small_mm(mat1: torch.Tensor, mat2: torch.Tensor) -> Any:
    """``mat1 @ mat2`` as fused arithmetic when small or thin (see the module); else
    inductor's own decomposition."""
    linear = _whole_linear.eligible(mat1, mat2)
    product = _fused(mat1, mat2, thin_first=not linear)
    if product is not None:
        return product
    if linear:
        return _whole_linear.linear(mat1, mat2.t(), None)
    return _default(torch.ops.aten.mm.default)(mat1, mat2)


def small_addmm(
    bias: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, beta: Any = 1, alpha: Any = 1
) -> Any:
    """``beta * bias + alpha * mat1 @ mat2`` (``torch.addmm``) as fused arithmetic when
    small or thin (see the module); else inductor's own decomposition."""
    if bias.dtype != mat1.dtype or mat1.device.type != "cpu" or mat1.dtype not in _FUSED_DTYPES:
        return _default(torch.ops.aten.addmm.default)(bias, mat1, mat2, beta=beta, alpha=alpha)
    linear = alpha == 1 and beta == 1 and bias.shape == mat2.shape[1:]
    linear = linear and _whole_linear.eligible(mat1, mat2)
    product = _fused(mat1, mat2, thin_first=not linear)
    unfused = product is None
    if unfused and linear:
        return _whole_linear.linear(mat1, mat2.t(), bias)
    if unfused:
        product = torch.mm(mat1, mat2)  # (through small_mm: ATen's mm)
    if alpha != 1:
        product = alpha * product
    if beta == 0:  # (as torch.addmm: the bias is ignored, NaN included)
        return product
    bias = bias if beta == 1 else beta * bias
    return product - (-bias) if unfused else product + bias


def materialize(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``neuralode::materialize``, an identity): inside a graph compiled by inductor
    it is computed into a contiguous buffer of its own, where inductor would otherwise
    inline the expression computing it into each of its consumers' loops (a contiguous
    graph input or an already computed contiguous buffer is used as it is). Eagerly a
    contiguous copy."""
    define_operators()
    return torch.ops.neuralode.materialize(x)


_LIBRARY: list[Any] = []  # (the operators' library, once defined)


def define_operators() -> None:
    """Defines ``neuralode::materialize``, ``neuralode::tanh`` (``tanh_rational`` until the
    post-grad pass) and ``neuralode::linear`` (``_whole_linear``) with their lowerings,
    once."""
    if not _LIBRARY:
        _define_library()
    _whole_linear.define()


def _define_library() -> None:
    from torch._inductor import ir
    from torch._inductor.lowering import register_lowering

    library = torch.library.Library("neuralode", "DEF")
    library.define("materialize(Tensor x) -> Tensor")
    library.impl(
        "materialize",
        lambda x: x.clone(memory_format=torch.contiguous_format),
        "CompositeExplicitAutograd",
    )
    torch.library.register_fake(
        "neuralode::materialize",
        lambda x: torch.empty_like(x, memory_format=torch.contiguous_format),
    )
    torch.library.register_autograd("neuralode::materialize", lambda ctx, grad: grad)

    def realized(x: Any) -> Any:
        x.realize()  # (a buffer of its own, shared by every consumer)...
        return ir.ExternKernel.require_contiguous(x)  # ...with contiguous strides

    register_lowering(torch.ops.neuralode.materialize.default)(realized)

    # tanh_rational as an operator of its own until the post-grad pass
    # (fuse_linear_activations) computes it in a linear layer or writes it out
    library.define("tanh(Tensor x) -> Tensor")
    library.impl("tanh", tanh_rational, "CompositeExplicitAutograd")
    torch.library.register_fake("neuralode::tanh", torch.empty_like)
    _LIBRARY.append(library)


def _default(op: Any) -> Any:
    """Inductor's decomposition of ``op`` (which returns ``NotImplemented`` to keep it)."""
    from torch._inductor.decomposition import select_decomp_table

    return select_decomp_table()[op]


def refuse_float_reads(gm: torch.fx.GraphModule) -> None:
    """A ``ValueError`` if f reads a tensor's value as a Python float (``.item()``,
    ``float(x)``) anywhere in the graph: inside ``while_loop``, dynamo captures the number,
    and inductor (torch 2.13) computes with it in single precision, so a float64 solve
    would be wrong by about 1e-8 relatively. The solve then compiles each step instead,
    where the read is a graph break and runs eagerly."""
    for name, module in gm.named_modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            read = node.op == "call_method" and node.target == "item"
            if read and isinstance(node.meta.get("example_value"), torch.SymFloat):
                where = f" (in {name})" if name else ""
                raise ValueError(
                    f"f reads a tensor's value as a Python float (.item() or float()){where}, "
                    "which inductor computes in single precision inside while_loop; keep it a "
                    "tensor to compile the whole solve"
                )


def whole_solve_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """torch.compile's inductor backend with its C++ wrapper, fused multiply-adds and the
    lowerings of the module (the backend of the compiled whole solve)."""
    import torch._inductor.config as inductor_config
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    refuse_float_reads(gm)
    define_operators()
    aten = torch.ops.aten
    table = {**select_decomp_table(), aten.mm.default: small_mm, aten.addmm.default: small_addmm}
    own_tanh = not inductor_config.cpp.use_decompose_tanh  # (else the user's: inductor's)
    if own_tanh:
        table[aten.tanh.default] = tanh_float32
    # AOTAutograd's cache key leaves the decompositions out (torch 2.13 caches no while_loop
    # graph, but other graphs may come here): the key's tag names these lowerings (this
    # module's source and settings), so a graph lowered otherwise, by plain inductor or
    # another version of this module, is never reused for them
    settings = f"{_SOURCE}:{own_tanh}:{SMALL_ROWS}:{SMALL_SIZE}:{THIN}:{FLOATING_POINT_CONTRACT}"
    tag = hashlib.sha256(settings.encode()).hexdigest()[:16]
    user_tag = torch.compiler.config.cache_key_tag
    with torch.compiler.config.patch(cache_key_tag=f"{user_tag}|neuralode-whole-solve-{tag}"):
        config_patches = {
            "cpp_wrapper": True,
            "cpp.enable_floating_point_contract_flag": FLOATING_POINT_CONTRACT,
            "post_grad_custom_post_pass": _fuse_pass(),
        }
        return compile_fx(gm, example_inputs, config_patches=config_patches, decompositions=table)


def fuse_linear_activations(graph: torch.fx.Graph) -> None:
    """The post-grad pass of these graphs: a ``neuralode::tanh`` whose argument is a
    ``neuralode::linear`` without activation, used by nothing else, becomes the linear
    layer with ``activation="tanh"`` (computed on the registers, ``_whole_linear``); every
    other ``neuralode::tanh`` becomes ``tanh_rational``'s arithmetic."""
    linear = torch.ops.neuralode.linear.default
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.neuralode.tanh.default:
            continue
        producer = node.args[0]
        fusable = isinstance(producer, torch.fx.Node) and producer.target is linear
        if fusable and producer.args[3] == "none" and len(producer.users) == 1:
            with graph.inserting_before(node):
                fused = graph.call_function(linear, (*producer.args[:3], "tanh"))
            fused.meta.update(node.meta)
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
            graph.erase_node(producer)
            continue
        with graph.inserting_before(node):
            value = write_tanh_rational(graph, producer, node.meta)
        node.replace_all_uses_with(value)
        graph.erase_node(node)


@functools.cache
def _fuse_pass() -> Any:
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class FuseLinearActivations(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            fuse_linear_activations(graph)

        def uuid(self) -> Any:
            return get_hash_for_files((__file__, _whole_linear.__file__, _whole_tanh.__file__))

    return FuseLinearActivations()


_SOURCE = hashlib.sha256(
    b"".join(Path(m).read_bytes() for m in (__file__, _whole_linear.__file__, _whole_tanh.__file__))
).hexdigest()
