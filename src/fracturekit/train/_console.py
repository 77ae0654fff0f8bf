"""What training prints: rich progress bars with ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class Console:
    """Rich progress bars with ETA on rank 0 (and only on a terminal); plain lines otherwise.

    A disabled console (other ranks, ``progress=False``) prints nothing.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = None
        self.progress = None
        if enabled:
            from rich.console import Console as RichConsole

            self.console = RichConsole()

    def print(self, text: str, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def bars(self) -> Iterator[Console]:
        """Show progress bars while the block runs (a no-op when not on a terminal)."""
        if self.console is None or not self.console.is_terminal:
            yield self
            return
        from fracturekit.progress import rich_progress

        self.progress = rich_progress(eta=True, info=True, console=self.console)
        with self.progress:
            yield self
        self.progress = None

    def task(self, description: str, total: int) -> Any:
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total, info="")

    def advance(self, task: Any, n: int = 1, info: str | None = None) -> None:
        if self.progress is not None and task is not None:
            kw = {"info": info} if info is not None else {}
            self.progress.update(task, advance=n, **kw)

    def done(self, task: Any) -> None:
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)


def epoch_line(row: dict[str, Any], epochs: int, rate: float, best: bool) -> str:
    """The one line printed after each epoch."""
    text = (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.3f}"
    )
    if row["val_loss"] is not None:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
    text += f"  lr {row['lr']:.2e}  {row['seconds']:.1f} s ({rate:.0f} img/s)"
    return text + ("  *best" if best else "")
