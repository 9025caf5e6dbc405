"""Live progress for ``fleet drill`` and ``devicesim run``: a panel redrawn in place on a
terminal (rich), one plain line every few seconds elsewhere (CI logs), nothing when quiet.

The owner hands :meth:`LiveView.update` an ordered mapping of fields (``"devices": "98/100
connected"``, ...) whenever it likes; the view decides when to draw. :meth:`LiveView.say`
prints a line that stays (a step of the schedule), above the panel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

#: on a non-terminal, one line every this many seconds
PLAIN_EVERY = 5.0


class LiveView:
    def __init__(self, title: str, *, quiet: bool = False, every: float = PLAIN_EVERY,
                 console: Console | None = None) -> None:
        self.title, self.quiet, self.every = title, quiet, every
        self.console = console or Console(highlight=False)
        self._live: Live | None = None
        self._last_line = -math.inf  # the first figures are printed at once
        self._fields: dict[str, str] = {}

    @property
    def interactive(self) -> bool:
        return not self.quiet and self.console.is_terminal

    def __enter__(self) -> LiveView:
        if self.interactive:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, tb)
            self._live = None

    def say(self, text: str) -> None:
        """A line that stays (above the live panel on a terminal); printed even when quiet
        (the schedule's steps are not progress: they are what happened)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def update(self, fields: Mapping[str, str], *, force: bool = False) -> None:
        """New figures: redrawn on a terminal; on anything else a plain line when
        ``every`` seconds passed since the last (or ``force``)."""
        if self.quiet:
            return
        self._fields = dict(fields)
        if self._live is not None:
            self._live.update(self._table())
            return
        now = time.monotonic()
        if force or now - self._last_line >= self.every:
            self._last_line = now
            print(self.line(self._fields), flush=True)

    @staticmethod
    def line(fields: Mapping[str, str]) -> str:
        return "  " + " | ".join(f"{k} {v}" for k, v in fields.items())

    def _table(self) -> Table:
        table = Table(title=self.title, show_header=False, box=None, title_justify="left",
                      padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in self._fields.items():
            table.add_row(key, value)
        return table
