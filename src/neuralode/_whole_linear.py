"""A fused linear layer for the compiled whole solve on the CPU (``neuralode::linear``).

``linear(x, weight, bias, activation)`` is ``activation(x @ weight.t() + bias)`` for an
(M, K) ``x`` and an (N, K) ``weight`` (``torch.nn.Linear``'s layout), with ``activation``
``"none"`` or ``"tanh"``. Eagerly it is that expression. Inside a graph compiled by the
whole solve's backend it is a C++ kernel generated into the graph's own code (an inductor
C++ template): the weight transposed into a (K, N) buffer on the stack, then for each block
of rows of ``x`` (``_blocking``: up to ``MAX_BLOCK_ROWS`` rows by up to 4 vectors of
columns) the outputs accumulated in vector registers over the inner dimension, starting
from the bias, and the activation computed on the registers before they are stored.
Against ATen's ``mm`` (MKL) it packs no ``x``, zeroes no output and writes each output
once, bias and activation included (BENCHMARKS.md). With more than one thread
(``torch.get_num_threads()`` when the graph is compiled) the blocks of rows are shared
among them once the product has at least ``PARALLEL_WORK`` multiply-adds.

The tanh is ``_whole_tanh.tanh_rational``'s form with its clamp computed as one maximum
and one minimum instruction (``at::vec::clamp``, which returns NaN for NaN); inductor's own
``maximum``/``minimum`` check for NaN in each argument, which costs about a fifth of the
loop. The sums are the same products as ``mm``'s up to their order (round-off).

It serves float32 on x86 CPUs with AVX2 or AVX-512 (``vector_width``), N a multiple of the
vector width and a weight of at most ``MAX_WEIGHT`` elements (``eligible``); every other
product stays ATen's.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_BLOCK_ROWS = 12  # rows of x per register block at most
PARALLEL_WORK = 1 << 20  # multiply-adds from which the blocks are shared among threads
MAX_WEIGHT = 64 * 256  # the packed transposed weight lives on the stack (64 KiB)
ACTIVATIONS = ("none", "tanh")

_DEFINED: list[Any] = []  # (the operator's library, once defined)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """``activation(x @ weight.t() + bias)`` as one operator (``neuralode::linear``).

    Raises:
        ValueError: for an activation other than ``ACTIVATIONS``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    define()
    return torch.ops.neuralode.linear(x, weight, bias, activation)


def eager_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str
) -> torch.Tensor:
    """The operator's meaning, as torch computes it eagerly."""
    out = torch.nn.functional.linear(x, weight, bias)
    return torch.tanh(out) if activation == "tanh" else out


def vector_width() -> int:
    """float32 lanes of the vector ISA inductor compiles for; 0 where the kernel is not
    used (no AVX2/AVX-512)."""
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.pick_vec_isa()
    if not isinstance(isa, (cpu_vec_isa.VecAVX2, cpu_vec_isa.VecAVX512)):
        return 0
    return isa.nelements(torch.float32)


def eligible(mat1: torch.Tensor, mat2: torch.Tensor) -> bool:
    """Whether ``mat1 @ mat2`` can run as ``linear`` here (see the module)."""
    width = vector_width()
    if width == 0 or mat1.device.type != "cpu" or mat1.dtype != torch.float32:
        return False
    if mat2.dtype != torch.float32 or mat1.dim() != 2 or mat2.dim() != 2:
        return False
    inner, columns = mat2.shape
    if not (isinstance(inner, int) and isinstance(columns, int)):
        return False  # (the kernel is written for the weight's shape)
    return columns % width == 0 and 0 < inner * columns <= MAX_WEIGHT


def define() -> None:
    """Defines the operator and its lowering (once)."""
    if _DEFINED:
        return
    from torch._inductor.lowering import register_lowering

    library = torch.library.Library("neuralode", "FRAGMENT")
    library.define("linear(Tensor x, Tensor weight, Tensor? bias, str activation) -> Tensor")
    library.impl("linear", eager_linear, "CompositeExplicitAutograd")
    torch.library.register_fake(
        "neuralode::linear",
        lambda x, weight, bias, activation: x.new_empty((x.shape[0], weight.shape[0])),
    )
    register_lowering(torch.ops.neuralode.linear.default)(_lowering)
    _DEFINED.append(library)


def _lowering(x: Any, weight: Any, bias: Any, activation: str) -> Any:
    from torch._inductor import ir

    def contiguous(node: Any) -> Any:
        node = ir.ExternKernel.require_contiguous(ir.ExternKernel.realize_input(node))
        if node.get_layout().offset != 0:
            node = ir.ExternKernel.require_contiguous(ir.ExternKernel.copy_input(node))
        return node

    x, weight = contiguous(x), contiguous(weight)
    inputs = [x, weight] if bias is None else [x, weight, contiguous(bias)]
    rows, columns = x.get_size()[0], weight.get_size()[0]
    layout = ir.FixedLayout(x.get_device(), torch.float32, [rows, columns], [columns, 1])
    template = _template_class()(inputs, layout, activation)
    out = template.generate().output_node()
    out.data.data.allow_epilogue_fusion = False  # (the kernel stores its own outputs)
    return out


_TEMPLATE: list[Any] = []


def _template_class() -> Any:
    if _TEMPLATE:
        return _TEMPLATE[0]
    from torch._inductor.codegen.cpp_template import CppTemplate
    from torch._inductor.utils import parallel_num_threads

    class LinearTemplate(CppTemplate):
        def __init__(self, inputs: list[Any], layout: Any, activation: str) -> None:
            super().__init__("neuralode_linear", inputs, layout, num_threads=1)
            self.activation = activation

        def render(self, kernel: Any, template_buffer_node: Any = None, **kwargs: Any) -> str:
            out = template_buffer_node or self.output_node
            names = {"X": self.input_nodes[0], "W": self.input_nodes[1]}
            if len(self.input_nodes) == 3:
                names["B"] = self.input_nodes[2]
            signature = kernel.def_kernel(inputs=names, outputs={"Y": out})
            sizes = {
                "rows": kernel.size(self.input_nodes[0], 0),
                "inner": int(self.input_nodes[0].get_size()[1]),
                "columns": int(self.input_nodes[1].get_size()[0]),
            }
            body = kernel_source(
                sizes,
                vector_width(),
                has_bias="B" in names,
                activation=self.activation,
                threads=parallel_num_threads(),
            )
            return f'{self.header().getvalue()}\nextern "C" {signature}\n{body}\n'

    _TEMPLATE.append(LinearTemplate)
    return LinearTemplate


def _blocking(columns_in_vectors: int, width: int) -> tuple[int, int]:
    """(rows, vectors) of a register block: its accumulators, the weight's vectors and a
    broadcast of x within the ISA's registers (32 with AVX-512, 16 with AVX2)."""
    registers = 32 if width == 16 else 16
    vectors = next(v for v in (4, 2, 1) if columns_in_vectors % v == 0)
    return min(MAX_BLOCK_ROWS, (registers - vectors - 1) // vectors), vectors


def kernel_source(
    sizes: dict[str, Any], width: int, has_bias: bool, activation: str, threads: int = 1
) -> str:
    """The C++ body of the kernel (see the module): ``sizes`` holds ``rows`` (a C
    expression), ``inner`` and ``columns`` (ints); blocks of rows are shared among
    ``threads`` OpenMP threads when there are enough of them."""
    from ._whole_tanh import RATIONAL_CLAMP, RATIONAL_P, RATIONAL_Q

    inner, columns = sizes["inner"], sizes["columns"]
    block_rows, vectors = _blocking(columns // width, width)
    lines = [
        "{",
        "    using Vec = at::vec::Vectorized<float>;",
        f"    const int64_t M = {sizes['rows']};",
        f"    constexpr int64_t K = {inner};",
        f"    constexpr int64_t N = {columns};",
        "    alignas(64) float packed[K * N];  // the weight transposed: (K, N)",
        "    at::vec::transpose_mxn<float>(W, K, packed, N, N, K);",
    ]
    if activation == "tanh":
        lines += [
            f"    const Vec lo(-{RATIONAL_CLAMP!r}f), hi({RATIONAL_CLAMP!r}f);",
            *[f"    const Vec p{i}({c!r}f);" for i, c in enumerate(RATIONAL_P)],
            *[f"    const Vec q{i}({c!r}f);" for i, c in enumerate(RATIONAL_Q)],
        ]

    def block(rows: int) -> list[str]:
        acc = [[f"a{i}_{j}" for j in range(vectors)] for i in range(rows)]
        out = []
        for j in range(vectors):
            start = f"Vec::loadu(B + nb + {j * width})" if has_bias else "Vec(0.0f)"
            out += [f"Vec {acc[i][j]} = {start};" for i in range(rows)]
        out.append("for (int64_t k = 0; k < K; k++) {")
        out += [
            f"    const Vec w{j} = Vec::loadu(packed + k * N + nb + {j * width});"
            for j in range(vectors)
        ]
        for i in range(rows):
            out.append(f"    const Vec x{i}(X[(m + {i}) * K + k]);")
            out += [
                f"    {acc[i][j]} = at::vec::fmadd(x{i}, w{j}, {acc[i][j]});"
                for j in range(vectors)
            ]
        out.append("}")
        for i in range(rows):
            for j in range(vectors):
                if activation == "tanh":
                    out += _tanh_lines(acc[i][j], len(RATIONAL_P), len(RATIONAL_Q))
                out.append(f"{acc[i][j]}.store(Y + (m + {i}) * N + nb + {j * width});")
        return out

    def over_columns(rows: int) -> list[str]:
        body = "\n".join("            " + line for line in block(rows))
        return [
            f"        for (int64_t nb = 0; nb < N; nb += {vectors * width}) {{",
            body,
            "        }",
        ]

    lines.append(f"    const int64_t blocks = M / {block_rows};")
    if threads > 1:
        # (a block of rows is about K * N * block_rows multiply-adds)
        lines.append(
            f"    #pragma omp parallel for num_threads({threads}) "
            f"if (blocks * K * N >= {PARALLEL_WORK // block_rows})"
        )
    lines += [
        "    for (int64_t block = 0; block < blocks; block++) {",
        f"        const int64_t m = block * {block_rows};",
        *over_columns(block_rows),
        "    }",
        f"    for (int64_t m = blocks * {block_rows}; m < M; m++) {{",
        *over_columns(1),
        "    }",
        "}",
    ]
    return "\n".join(lines)


def _tanh_lines(value: str, p_terms: int, q_terms: int) -> list[str]:
    """``value = tanh_rational(value)`` on a register (see the module)."""
    lines = [
        f"{value} = at::vec::clamp({value}, lo, hi);",
        "{",
        f"    const Vec s = {value} * {value};",
        "    Vec p = at::vec::fmadd(s, p0, p1);",
        *[f"    p = at::vec::fmadd(p, s, p{i});" for i in range(2, p_terms)],
        "    Vec q = at::vec::fmadd(s, q0, q1);",
        *[f"    q = at::vec::fmadd(q, s, q{i});" for i in range(2, q_terms)],
        f"    {value} = {value} * p / q;",
        "}",
    ]
    return lines
