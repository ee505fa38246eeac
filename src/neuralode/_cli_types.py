"""Argument types of the command line: each converts an option's text and checks its range.

Used as argparse's ``type=``, a value out of range stops the parse with a one-line error that
names the option and the range, e.g. ``argument --iters: must be a positive integer, got -1``,
before any work is done or any directory is created. An option with ``nargs="+"`` checks each
of its values.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# numpy's seeds (np.random.seed, np.random.default_rng) are integers in [0, 2**32 - 1]
SEED_LIMIT = 2**32 - 1


def _integer(text: str, valid: Callable[[int], bool], what: str) -> int:
    """``text`` as an integer that is ``valid``; ``what`` describes the valid ones."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def _number(text: str, valid: Callable[[float], bool], what: str) -> float:
    """``text`` as a finite float that is ``valid``; ``what`` describes the valid ones."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not (math.isfinite(value) and valid(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count of steps, samples, layers, ...).

    Arguments:
        text: the option's text.

    Returns:
        Its integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer >= 1.
    """
    return _integer(text, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (where 0 has a meaning: torch's default threads, all images, ...).

    Arguments:
        text: the option's text.

    Returns:
        Its integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer >= 0.
    """
    return _integer(text, lambda value: value >= 0, "a non-negative integer")


MAX_THREADS = 1024  # (far above any machine's cores; torch.set_num_threads(100000) crashes)


def thread_count(text: str) -> int:
    """A number of torch threads: 0 (torch's default) to ``MAX_THREADS``.

    Arguments:
        text: the option's text.

    Returns:
        Its integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer from 0 to ``MAX_THREADS``.
    """
    return _integer(
        text, lambda value: 0 <= value <= MAX_THREADS, f"an integer from 0 to {MAX_THREADS}"
    )


def warmup_epochs(text: str) -> float:
    """A warm-up length in epochs: a non-negative number up to 1e6.

    Arguments:
        text: the option's text.

    Returns:
        Its float.

    Raises:
        argparse.ArgumentTypeError: it is not a number from 0 to 1e6.
    """
    return _number(text, lambda value: 0 <= value <= 1e6, "a number of epochs from 0 to 1e6")


def random_seed(text: str) -> int:
    """A random seed: an integer in [0, 2**32 - 1], the range numpy's generators take.

    Arguments:
        text: the option's text.

    Returns:
        Its integer.

    Raises:
        argparse.ArgumentTypeError: it is not an integer in that range.
    """
    return _integer(text, lambda value: 0 <= value <= SEED_LIMIT, "an integer in [0, 2**32 - 1]")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """The argument type of the integers from ``minimum`` up.

    Arguments:
        minimum: the smallest valid value.

    Returns:
        A function of the option's text that returns its integer and raises
        ``argparse.ArgumentTypeError`` for an integer below ``minimum`` or a non-integer.
    """

    def int_at_least(text: str) -> int:
        return _integer(text, lambda value: value >= minimum, f"an integer >= {minimum}")

    return int_at_least


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """The argument type of the integers in ``[low, high]``.

    Arguments:
        low: the smallest valid value.
        high: the largest valid value.

    Returns:
        A function of the option's text that returns its integer and raises
        ``argparse.ArgumentTypeError`` for an integer outside the range or a non-integer.
    """

    def int_in_range(text: str) -> int:
        return _integer(text, lambda value: low <= value <= high, f"an integer in [{low}, {high}]")

    return int_in_range


def positive_float(text: str) -> float:
    """A finite number > 0 (a learning rate, a tolerance, a step or a time).

    Arguments:
        text: the option's text.

    Returns:
        Its float.

    Raises:
        argparse.ArgumentTypeError: it is not a finite number > 0.
    """
    return _number(text, lambda value: value > 0, "a positive number")


def positive_float_at_most(high: float) -> Callable[[str], float]:
    """The argument type of the numbers in ``(0, high]`` (a step within a fixed time span).

    Arguments:
        high: the largest valid value.

    Returns:
        A function of the option's text that returns its float and raises
        ``argparse.ArgumentTypeError`` for a number outside the range or a non-number.
    """

    def positive_float_at_most(text: str) -> float:
        return _number(text, lambda value: 0 < value <= high, f"a number in (0, {high:g}]")

    return positive_float_at_most


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a weight that 0 turns off).

    Arguments:
        text: the option's text.

    Returns:
        Its float.

    Raises:
        argparse.ArgumentTypeError: it is not a finite number >= 0.
    """
    return _number(text, lambda value: value >= 0, "a non-negative number")


def fraction(text: str) -> float:
    """A number in [0, 1) (a dropout rate, a decay or a share, that 0 turns off).

    Arguments:
        text: the option's text.

    Returns:
        Its float.

    Raises:
        argparse.ArgumentTypeError: it is not a number in [0, 1).
    """
    return _number(text, lambda value: 0 <= value < 1, "a number in [0, 1)")


def open_unit(text: str) -> float:
    """A number in (0, 1) (a relative tolerance that must stay below one).

    Arguments:
        text: the option's text.

    Returns:
        Its float.

    Raises:
        argparse.ArgumentTypeError: it is not a number in (0, 1).
    """
    return _number(text, lambda value: 0 < value < 1, "a number in (0, 1)")


def method_name(text: str) -> str:
    """The name of a solver in ``neuralode.METHODS`` (checked before ``--out`` is touched, so
    that a misspelt ``--method`` with ``--overwrite`` leaves the earlier run in place).

    Arguments:
        text: the option's text.

    Returns:
        The name.

    Raises:
        argparse.ArgumentTypeError: no solver has that name (the message lists them).
    """
    from . import METHODS

    if text not in METHODS:
        raise argparse.ArgumentTypeError(
            f"unknown method {text!r}; available: {', '.join(METHODS)}"
        )
    return text


def widths(text: str) -> str:
    """Comma-separated positive integers, such as the hidden widths ``64,64,64``.

    Arguments:
        text: the option's text.

    Returns:
        The integers joined by commas without spaces: a string, as the ``--quick`` defaults
        that the experiments split at their use.

    Raises:
        argparse.ArgumentTypeError: a part is not a positive integer.
    """
    what = "comma-separated positive integers (e.g. 64,64,64)"
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not all(value >= 1 for value in values):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return ",".join(map(str, values))
