"""A dependency-free progress bar on stderr: position, rate and live metrics."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``update(done, **fields)`` redraws ``prefix [####....] done/total fields rate``.

    On a terminal the line is redrawn in place (at most every ``interval`` seconds); when
    stderr is a file or a pipe, a line is written every tenth of the way instead.
    """

    def __init__(
        self,
        total: int,
        prefix: str = "",
        stream: TextIO | None = None,
        enabled: bool = True,
        width: int = 24,
        interval: float = 0.2,
    ):
        self.total, self.prefix, self.width, self.interval = max(total, 1), prefix, width, interval
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._line = ""

    def update(self, done: int, **fields: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        filled = self.width * done // self.total
        rate = done / max(now - self.start, 1e-9)
        text = " ".join(f"{key} {value}" for key, value in fields.items())
        self._line = (
            f"{self.prefix} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{done}/{self.total} {text} {rate:.2f} it/s"
        )
        if self.tty:
            if now - self._last_draw >= self.interval or done == self.total:
                self.stream.write("\r" + self._line + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
        else:
            tenth = 10 * done // self.total
            if tenth != self._last_tenth:
                self.stream.write(self._line + "\n")
                self.stream.flush()
                self._last_tenth = tenth

    def close(self) -> None:
        if self.enabled and self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()
