"""A rich live terminal view: top species with score bars, recent events, input level, speed, losses."""
from __future__ import annotations

from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .events import Event
from .pipeline import StreamStatus


def bar(value: float, width: int = 24, style: str = "green") -> Text:
    value = min(max(value, 0.0), 1.0)
    full = int(round(value * width))
    return Text("█" * full, style=style) + Text("░" * (width - full), style="grey30")


class LiveView:
    """A sink: shows events as they come and the stream's state after every block."""

    def __init__(self, console: Console | None = None, device: str = "", model: str = "", recent: int = 12):
        self.console = console or Console()
        self.device, self.model = device, model
        self.recent: deque[Event] = deque(maxlen=recent)
        self.status: StreamStatus | None = None
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def write(self, e: Event) -> None:
        self.recent.appendleft(e)
        self._live.update(self._render())

    def update(self, status: StreamStatus) -> None:
        self.status = status
        self._live.update(self._render())

    def close(self) -> None:
        self._live.update(self._render())
        self._live.stop()

    def _render(self):
        s = self.status
        head = Table.grid(padding=(0, 2))
        head.add_row(Text("birdlive", style="bold cyan"), Text(self.device or (s.source if s else "")),
                     Text(f"model {self.model}", style="dim"))
        if s is not None:
            stats = s.source_stats
            level = bar((s.level_dbfs + 90) / 90, 30, "yellow" if s.level_dbfs < -3 else "red")
            head.add_row("level", level, f"{s.level_dbfs:6.1f} dBFS")
            head.add_row("time", f"{s.audio_s:8.1f} s audio", f"{s.realtime_factor:6.1f}× real time")
            lost = (f"overflows {stats.get('overflows', 0)}  dropped blocks {stats.get('dropped_blocks', 0)}  "
                    f"reconnects {stats.get('reconnects', 0)}  skipped windows {s.skipped_windows}")
            head.add_row("losses", lost, f"{s.events} events")
        top = Table(title="now", expand=True, show_edge=False)
        top.add_column("species")
        top.add_column("score")
        top.add_column("", justify="right")
        for name, score in (s.top if s else []):
            top.add_row(name, bar(score), f"{score:.2f}")
        ev = Table(title="recent events", expand=True, show_edge=False)
        for col in ("onset s", "offset s", "species", "peak"):
            ev.add_column(col)
        for e in self.recent:
            ev.add_row(f"{e.onset_s:.1f}", f"{e.offset_s:.1f}", e.name, f"{e.peak:.2f}")
        return Panel(Group(head, top, ev), border_style="cyan")
