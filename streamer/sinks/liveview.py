"""A rich live terminal view: one row per source (level, speed, losses, what it hears now) and recent events."""
from __future__ import annotations

from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..core.events import Event, EventAudio, StreamStatus


def bar(value: float, width: int = 24, style: str = "green") -> Text:
    value = min(max(value, 0.0), 1.0)
    full = int(round(value * width))
    return Text("█" * full, style=style) + Text("░" * (width - full), style="grey30")


def _short(source: str) -> str:
    """A file's name without its folders (the CSV keeps the whole path); a device name or a (redacted) URL as it
    is."""
    return source if "://" in source else source.rsplit("/", 1)[-1]


class LiveView:
    """A sink: shows events as they come and every stream's state as it is refreshed."""

    def __init__(self, console: Console | None = None, model: str = "", recent: int = 12):
        self.console = console or Console()
        self.model = model
        self.recent: deque[Event] = deque(maxlen=recent)
        self.streams: dict[str, StreamStatus] = {}
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()

    def on_event(self, e: Event, audio: EventAudio | None = None) -> None:
        self.recent.appendleft(e)
        self._live.update(self._render())

    def on_status(self, status: StreamStatus) -> None:
        self.streams[status.source] = status
        self._live.update(self._render())

    def close(self) -> None:
        self._live.update(self._render())
        self._live.stop()

    def _render(self):
        head = Text.assemble(("birdlive", "bold cyan"), "  ", (f"model {self.model}", "dim"))
        sources = Table(expand=True, show_edge=False)
        for col, just in (("source", "left"), ("level", "left"), ("dBFS", "right"), ("audio s", "right"),
                          ("× real time", "right"), ("events", "right"), ("losses", "left"), ("now", "left")):
            sources.add_column(col, justify=just)
        for s in self.streams.values():
            st = s.source_stats
            losses = "  ".join(f"{k.replace('_', ' ')} {st[k]}" for k in ("overflows", "dropped_blocks", "outages",
                                                                         "reconnects", "clock_steps") if st.get(k))
            now = ", ".join(f"{name} {score:.2f}" for name, score in s.top[:2] if score >= 0.05)
            state = "" if s.state == "running" else f" ({s.state})"
            sources.add_row(_short(s.source) + state, bar((s.level_dbfs + 90) / 90, 16, "yellow" if s.level_dbfs < -3
                                                   else "red"), f"{s.level_dbfs:.1f}", f"{s.audio_s:.1f}",
                            f"{s.realtime_factor:.1f}", str(s.events), losses or "none", now)
        ev = Table(title="recent events", expand=True, show_edge=False)
        several = len(self.streams) > 1
        for col in (["source"] if several else []) + ["onset s", "offset s", "species", "peak"]:
            ev.add_column(col)
        for e in self.recent:
            ev.add_row(*([_short(e.source)] if several else []), f"{e.onset_s:.1f}", f"{e.offset_s:.1f}", e.name,
                       f"{e.peak:.2f}")
        return Panel(Group(head, sources, ev), border_style="cyan")
