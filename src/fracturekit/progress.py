"""One progress bar for every long job (predict, explain, scan, training, caching).

``progress_bar(label)`` gives a context manager whose ``update(done, total)`` is the
``progress=`` callback the library functions take. The bar goes to standard error, starts on the
first update (so an error raised while inputs are checked prints without a half-drawn bar) and,
by default, disappears when the job ends. rich is imported only when a bar is made.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any


class ProgressBar:
    """A rich progress bar with one task, driven by ``update(done, total)`` calls.

    Args:
        label: the words before the bar ("predicting", "scanning").
        eta: also show the time elapsed and the time remaining.
        transient: remove the bar when the job ends (else it stays as a record).
        console: a ``rich.console.Console`` (default: a new one on standard error).
    """

    def __init__(
        self, label: str, *, eta: bool = False, transient: bool = True, console: Any = None
    ) -> None:
        self.label = label
        self.eta = eta
        self.transient = transient
        self.console = console
        self._bar: Any = None
        self._task: Any = None
        self._started = False

    def _make(self) -> None:
        self._bar = rich_progress(
            self.label, eta=self.eta, transient=self.transient, console=self.console
        )
        self._task = self._bar.add_task(self.label, total=None)

    def update(self, done: int, total: int | None) -> None:
        """Report ``done`` of ``total`` items; the first call shows the bar."""
        if self._bar is None:
            self._make()
        if not self._started:
            self._bar.start()
            self._started = True
        self._bar.update(self._task, completed=done, total=total)

    __call__ = update

    def stop(self) -> None:
        """Take the bar off the screen (or leave it as a record when not transient)."""
        if self._started:
            self._bar.stop()
            self._started = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def rich_progress(
    label: str = "{task.description}",
    *,
    eta: bool = False,
    info: bool = False,
    transient: bool = True,
    console: Any = None,
) -> Any:
    """The ``rich.progress.Progress`` every bar of the tool is: label, bar, done/total, then
    with ``eta`` the time elapsed and left, with ``info`` the task's ``info`` field."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    if eta:
        columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    console = console if console is not None else Console(stderr=True)
    return Progress(*columns, console=console, transient=transient)


def progress_bar(
    label: str, *, eta: bool = False, transient: bool = True, console: Any = None
) -> ProgressBar:
    """A :class:`ProgressBar`; use it as ``with progress_bar("scanning") as bar: f(progress=bar)``."""
    return ProgressBar(label, eta=eta, transient=transient, console=console)
