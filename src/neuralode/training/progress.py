"""Progress bars for training loops: tqdm on stderr, the same for ``neuralode train`` and
every experiment."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str = "", *, enabled: bool = True, initial: int = 0) -> Any:
    """A tqdm bar on stderr: position, rate, time left and live metrics (``set_postfix``).

    On a terminal the line is redrawn in place; when stderr is a file or a pipe, tqdm writes
    an update at most every 30 seconds, so logs stay short.

    Arguments:
        total: the number of steps (batches of an epoch, or optimiser steps).
        desc: the text in front of the bar.
        enabled: ``False`` gives a bar that prints nothing (other ranks of a DDP run,
            ``--no-progress``).
        initial: the steps already done (a resumed run).

    Returns:
        The ``tqdm`` bar: call ``update(n)``, ``set_postfix(...)`` and ``close()``.
    """
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(
        total=total,
        desc=desc,
        initial=initial,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.2 if tty else 30.0,
        leave=True,
    )
