"""A small progress bar on stderr (counts, rate, elapsed time, ETA, a few named numbers), written here to
keep the dependencies to torch and numpy: redrawn in place on a terminal (after ``delay``), one final line
elsewhere."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "format_seconds"]

_WIDTH = 24
_REDRAW_S = 0.1


def format_seconds(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration.

    Examples:
        >>> format_seconds(75.4), format_seconds(3725)
        ('1:15', '1:02:05')
    """
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """A progress bar for ``total`` steps, written to ``stream`` (stderr by default).

    Args:
        total: the number of steps.
        description: printed before the bar.
        enabled: False draws nothing.
        stream: where to write (default ``sys.stderr``); redrawn in place only if it is a terminal.
        unit: the name of a step in the rate, ``it`` by default.
        delay: on a terminal, draw nothing until this many seconds have
            passed; a bar closed before then leaves no trace.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(4, "epoch 1/1", stream=out) as bar:
        ...     for _ in range(4):
        ...         bar.update(loss=0.25)
        >>> print(out.getvalue().strip())    # doctest: +ELLIPSIS
        epoch 1/1 |########################| 4/4 [0:00<0:00, ... it/s] loss=0.25
    """

    def __init__(
        self,
        total: int,
        description: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        unit: str = "it",
        delay: float = 0.0,
    ) -> None:
        self.total = max(int(total), 0)
        self.description = description
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.unit = unit
        self.delay = delay
        self.count = 0
        self.postfix: dict[str, float] = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = 0  # the width of the last line drawn in place, to blank what a shorter one leaves
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(enabled and callable(isatty) and isatty())
        self.closed = False

    def update(self, steps: int = 1, **postfix: float) -> None:
        """Advance by ``steps`` and set numbers to show after the bar, e.g. ``loss=0.31``."""
        self.count += steps
        self.postfix.update(postfix)
        if self.live:
            now = time.perf_counter()
            if now - self.start < self.delay:
                return
            if now - self._last_draw >= _REDRAW_S or self.count >= self.total:
                self._last_draw = now
                self._redraw(self.line())
                self.stream.flush()

    def set(self, **postfix: float) -> None:
        """Set numbers to show after the bar without advancing it."""
        self.postfix.update(postfix)

    def line(self) -> str:
        """The bar as one line of text."""
        elapsed = time.perf_counter() - self.start
        fraction = self.count / self.total if self.total else 1.0
        filled = round(_WIDTH * min(fraction, 1.0))
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        numbers = " ".join(f"{key}={value:.4g}" for key, value in self.postfix.items())
        text = (
            f"{self.description} |{'#' * filled}{' ' * (_WIDTH - filled)}| {self.count}/{self.total} "
            f"[{format_seconds(elapsed)}<{format_seconds(eta)}, {rate:.1f} {self.unit}/s]"
        )
        return f"{text} {numbers}".strip() if numbers else text.strip()

    def close(self) -> None:
        """Finish the bar's line (or, off a terminal, write its final state)."""
        if self.closed or not self.enabled:
            self.closed = True
            return
        self.closed = True
        if self.live and self.delay and not self._drawn and time.perf_counter() - self.start < self.delay:
            return  # quick work: never drawn, nothing to finish
        if self.live:
            self._redraw(self.line())
            self.stream.write("\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _redraw(self, line: str) -> None:
        """Overwrite the line in place, padding with spaces over the end of a longer earlier one."""
        self.stream.write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
