"""Truncated tensor algebra over R^d for signatures and log-signatures, in pure torch.

An element of the tensor algebra truncated at depth N is held as the list of its levels
1, ..., N, level k a tensor (..., d^k): the coefficients of the words of length k, a word
(w_1, ..., w_k) over the letters 0, ..., d - 1 at the flat index sum_i w_i d^(k - i) (the
row-major flattening of the tensor w_1 (x) ... (x) w_k). Level 0 is implicit: 1 for the
group-like elements (signatures, exponentials) and 0 for their logarithms.
"""

from __future__ import annotations

import functools

import torch

Levels = list[torch.Tensor]


def _outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Tensor product of a level-i and a level-j tensor: a level-(i + j) tensor."""
    return (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)


def exp_increments(dx: torch.Tensor, depth: int) -> Levels:
    """Truncated tensor exponentials of vectors dx (..., d): level k is dx^(x)k / k!."""
    levels = [dx]
    for k in range(2, depth + 1):
        levels.append(_outer(levels[-1], dx) / k)
    return levels


def group_mult(a: Levels, b: Levels) -> Levels:
    """Product of two group-like elements (implicit level 0 equal to 1)."""
    out = []
    for k in range(1, len(a) + 1):
        level = a[k - 1] + b[k - 1]
        for i in range(1, k):
            level = level + _outer(a[i - 1], b[k - i - 1])
        out.append(level)
    return out


def _mult_no_unit(a: Levels, b: Levels) -> Levels:
    """Product of two elements whose level 0 is 0 (levels still 1, ..., N)."""
    depth = len(a)
    out = [torch.zeros_like(a[0])]
    for k in range(2, depth + 1):
        level = _outer(a[0], b[k - 2])
        for i in range(2, k):
            level = level + _outer(a[i - 1], b[k - i - 1])
        out.append(level)
    return out


def reduce_product(levels: Levels) -> Levels:
    """Ordered product of the group-like elements along dimension -2 of every level.

    ``levels[k - 1]`` has shape (..., n, d^k). Neighbouring pairs are multiplied at once, a
    tree of ceil(log2(n)) vectorised rounds, so no Python loop runs over the n elements.
    Returns levels (..., d^k); the empty product (n == 0) is the unit, all levels zero.
    """
    n = levels[0].size(-2)
    if n == 0:
        return [lv.new_zeros(*lv.shape[:-2], lv.size(-1)) for lv in levels]
    while n > 1:
        half = n // 2
        pairs = [lv[..., : 2 * half, :].unflatten(-2, (half, 2)) for lv in levels]
        product = group_mult([p[..., 0, :] for p in pairs], [p[..., 1, :] for p in pairs])
        if n % 2:
            product = [torch.cat([p, lv[..., -1:, :]], -2) for p, lv in zip(product, levels)]
        levels = product
        n = levels[0].size(-2)
    return [lv[..., 0, :] for lv in levels]


def log(levels: Levels) -> Levels:
    """Truncated logarithm of a group-like element: sum_n (-1)^(n+1) X^n / n, X = S - 1."""
    depth = len(levels)
    out = list(levels)
    power = levels
    for n in range(2, depth + 1):
        power = _mult_no_unit(power, levels)
        sign = (-1) ** (n + 1) / n
        # X^n has no words shorter than n, so only levels n, ..., N change.
        for k in range(n, depth + 1):
            out[k - 1] = out[k - 1] + sign * power[k - 1]
    return out


def exp(levels: Levels) -> Levels:
    """Truncated exponential of an element with level 0 equal to 0: sum_n X^n / n!."""
    depth = len(levels)
    out = list(levels)
    power = levels
    factorial = 1.0
    for n in range(2, depth + 1):
        power = _mult_no_unit(power, levels)
        factorial *= n
        for k in range(n, depth + 1):
            out[k - 1] = out[k - 1] + power[k - 1] / factorial
    return out


@functools.lru_cache(maxsize=64)
def lyndon_words(channels: int, depth: int) -> tuple[tuple[int, ...], ...]:
    """Lyndon words over letters 0, ..., channels - 1 of length <= depth, grouped by length
    (shortest first) and lexicographic within a length."""
    # Duval's algorithm lists them in lexicographic order; the stable sort groups by length.
    words = []
    word = [-1]
    while word:
        word[-1] += 1
        words.append(tuple(word))
        period = len(word)
        while len(word) < depth:
            word.append(word[len(word) - period])
        while word and word[-1] == channels - 1:
            word.pop()
    return tuple(sorted(words, key=len))


def _mobius(n: int) -> int:
    result, p = 1, 2
    while p * p <= n:
        if n % p == 0:
            n //= p
            if n % p == 0:
                return 0
            result = -result
        p += 1
    return -result if n > 1 else result


def witt(channels: int, depth: int) -> int:
    """Number of Lyndon words of length <= depth: sum_k (1/k) sum_{m | k} mu(m) d^(k/m)."""
    total = 0
    for k in range(1, depth + 1):
        divisors = (m for m in range(1, k + 1) if k % m == 0)
        total += sum(_mobius(m) * channels ** (k // m) for m in divisors) // k
    return total


def lyndon_coefficients(levels: Levels) -> torch.Tensor:
    """The coefficients of the Lyndon words, in ``lyndon_words``'s order: (..., witt(d, N))."""
    channels, depth = levels[0].size(-1), len(levels)
    words = lyndon_words(channels, depth)
    out = []
    for k, level in enumerate(levels, start=1):
        # The word (w_1, ..., w_k) sits at the row-major index sum_i w_i d^(k - i).
        flat = [
            sum(c * channels ** (k - 1 - i) for i, c in enumerate(w)) for w in words if len(w) == k
        ]
        out.append(level[..., torch.tensor(flat, dtype=torch.long, device=level.device)])
    return torch.cat(out, -1)
