"""Progress of long work: rich's live bars on a terminal, plain lines otherwise.

rich's :class:`~rich.progress.Progress` draws nothing while its console is not a terminal (a
log file, CI, ``| tee``), so a benchmark or a simulation piped somewhere looked hung for
minutes. :class:`LineProgress` is a drop-in ``Progress`` that, on such a console, also writes
one plain line (no ANSI escapes) when a task starts, changes its description (the phase) or
crosses a tenth of its total, and when it completes. On a terminal it is rich's Progress.
"""

from __future__ import annotations

from typing import Any

from rich.progress import Progress, TaskID

__all__ = ["LineProgress"]

#: A plain line is written each time a task crosses another 1/STEPS of its total.
STEPS = 10


class LineProgress(Progress):
    """rich Progress on a terminal; on anything else, plain progress lines on the same stream."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.plain = not self.console.is_terminal
        if self.plain:
            self.live.transient = True  # the lines said it all: no bar drawn once at the end
        self._said: dict[TaskID, tuple[str, int]] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._say(task_id)
        return task_id

    def update(self, task_id: TaskID, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if not self.plain:
            return
        task = self._tasks.get(task_id)
        if task is None:
            return
        total = task.total
        step = int(STEPS * task.completed / total) if total else 0
        said = (task.description, min(step, STEPS))
        if self._said.get(task_id) == said:
            return
        self._said[task_id] = said
        amount = f" {task.completed:.4g}/{total:.4g}" if total else ""
        # the text only: rich markup in a description must not reach a log file as [bold]
        description = task.description.replace("[bold]", "").replace("[/]", "")
        self.console.file.write(f"{description}:{amount}\n")
        self.console.file.flush()
