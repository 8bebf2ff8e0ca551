"""Progress for long work: tqdm's bar on a terminal, plain lines anywhere else.

Under ``nohup``, a scheduler or ``> log.txt 2>&1``, a bar's carriage returns turn a log into a few lines of
hundreds of kilobytes. Off a terminal ``progress_bar`` returns ``LineProgress`` instead: the same calls (``update``,
``set_postfix``, ``write``, iteration, ``with``), printing one complete line when new figures are set and at most
every ``LINE_SECONDS`` otherwise: "train 200/2000 (10%) loss=0.4321 lr=9.10e-03 img_s=9.8 elapsed 1m05s ETA 9m45s".
``ATROUS_PROGRESS=bar|lines`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

LINE_SECONDS = 30.0  # the longest silence off a terminal, when nothing sets new figures
VARIABLE = "ATROUS_PROGRESS"


def lines_wanted() -> bool:
    """Whether progress should be plain lines: ``ATROUS_PROGRESS``, else whether stdout or stderr is not a terminal
    (a log file, a pipe, a batch scheduler's output)."""
    choice = os.environ.get(VARIABLE, "").strip().lower()
    if choice in ("bar", "lines"):
        return choice == "lines"
    return not (sys.stderr.isatty() and sys.stdout.isatty())


def progress_bar(iterable: Iterable | None = None, **options) -> tqdm | LineProgress:
    """``tqdm(iterable, **options)`` on a terminal, ``LineProgress`` with the same options otherwise."""
    if lines_wanted():
        return LineProgress(iterable, **options)
    return tqdm(iterable, **options)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class LineProgress:
    """tqdm's interface as complete lines on stderr (see the module's docstring)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = True,
                 line_seconds: float = LINE_SECONDS, **_ignored) -> None:  # fmt: skip
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, initial, initial
        self.postfix: dict[str, object] = {}
        self.line_seconds = line_seconds
        self.started = self.last_line = time.monotonic()
        self.last_count: int | None = None  # the count the last line showed

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()  # as tqdm does at the end of its iterable

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        self.n += count
        if time.monotonic() - self.last_line >= self.line_seconds:
            self._line()

    def set_postfix(self, **figures) -> None:
        """New figures (loss, lr, ...): printed at once, with the count, rate and ETA."""
        self.postfix = figures
        self._line()

    def write(self, message: str) -> None:
        if not self.disable:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n not in (self.initial, self.last_count):
            self._line()  # the final count, unless the last line already said it

    def _line(self) -> None:
        self.last_line, self.last_count = time.monotonic(), self.n
        if self.disable:
            return
        elapsed = self.last_line - self.started
        parts = [self.desc, f"{self.n}/{self.total}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        parts.append(f"elapsed {_duration(elapsed)}")
        done = self.n - self.initial
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"ETA {_duration(elapsed / done * (self.total - self.n))}")
        print(" ".join(part for part in parts if part), file=sys.stderr, flush=True)
