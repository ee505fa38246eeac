"""The entry point of the ``neuralode`` console script, outside the ``neuralode`` package.

Importing any module of ``neuralode`` first runs the package's ``__init__``, which imports
torch (seconds): a Ctrl-C then would end in a traceback before ``neuralode.cli.main`` could
catch it. This module imports nothing but ``sys`` before its ``main`` is called, so that
``main`` catches a Ctrl-C during the imports too and ends it as the command line ends any
other: one line and exit status 130.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _command_named(argv: Sequence[str]) -> str:
    """The command ``argv`` names, as ``neuralode.cli._command_named`` gives it (which this
    module cannot import without torch): ``train``, ``experiment spirals`` or empty."""
    words = [word for word in argv if not word.startswith("-")][:2]
    return " ".join(words if words[:1] == ["experiment"] else words[:1])


def main() -> int:
    """Runs ``neuralode.cli.main`` on ``sys.argv[1:]``.

    Returns:
        Its exit status; 130 when Ctrl-C stops the imports (with one line on stderr).
    """
    try:
        from neuralode.cli import main as run
    except KeyboardInterrupt:
        command = _command_named(sys.argv[1:])
        prefix = f"neuralode {command}" if command else "neuralode"
        print(f"{prefix}: error: interrupted", file=sys.stderr)
        return 130
    return run()
