"""Pictures of what birdlive heard: a spectrogram per event clip (`event_picture`, drawn by ClipWriter) and the
`--plot` of a whole recording (`RecordingPlot`: its spectrogram with every event boxed, and the species' score
tracks under it on the same time axis).

Drawing uses matplotlib's object API (`Figure`, no pyplot: no global backend switch, no figure registry to leak)
and is imported only when a picture is drawn, so importing birdlive.streamer stays fast. The spectrogram is a
few lines of numpy (Hann-windowed frames → rfft): scipy.signal would do the same, but importing it costs more
than drawing a clip, and matplotlib's `mlab.specgram` wants the whole signal at once, where a night-long
recording has to be read block by block.

Files here are written whole or not at all (`birdlive.files.atomic_path`), as clips.py writes its FLAC clips.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from birdlive.errors import BirdliveError, OptionError
from birdlive.files import atomic_path, writable_folder

from ..core.events import Event, EventAudio, SinkBase

CMAP = "magma"
DYNAMIC_RANGE_DB = 70.0     # darkest colour this far below the loudest part of the picture

log = logging.getLogger(__name__)


def save_png(fig, path: Path) -> None:
    """The figure as a PNG with a 256-colour palette: a spectrogram's noise makes a true-colour PNG four to five
    times larger (and clip pictures count against the clips' cap), and one colour map plus a few label colours
    lose nothing visible in 256. Pillow is matplotlib's own image writer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
    with atomic_path(path, durable_name=True) as tmp:
        image.quantize(256, method=Image.Quantize.FASTOCTREE).save(tmp, format="PNG")


# ---- spectrograms
def fft_size(sample_rate: int) -> int:
    """About 16 ms per frame at any rate (512 at 32 kHz): bird calls change fast, and their pitch matters less
    than their shape."""
    return 1 << max(7, round(np.log2(sample_rate * 0.016)))


def power_frames(x: np.ndarray, n_fft: int, hop: int, bins: slice) -> np.ndarray:
    """|rfft|² of the Hann-windowed frames x[k·hop : k·hop + n_fft] (every whole one), frequency `bins` only:
    shape (frames, bins)."""
    if len(x) < n_fft:
        return np.zeros((0, bins.stop - bins.start), np.float32)
    frames = sliding_window_view(np.asarray(x, np.float32), n_fft)[::hop]
    spec = np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)[:, bins]
    return (spec.real ** 2 + spec.imag ** 2).astype(np.float32)


def band(sample_rate: int, n_fft: int, fmin: float, fmax: float) -> tuple[slice, np.ndarray]:
    """The rfft bins from fmin to fmax (at most Nyquist), and their frequencies in Hz."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    keep = np.flatnonzero((freqs >= fmin) & (freqs <= min(fmax, sample_rate / 2)))
    return slice(int(keep[0]), int(keep[-1]) + 1), freqs[keep[0]:keep[-1] + 1]


def to_db(power: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Power → dB, and the colour range: the loudest part down DYNAMIC_RANGE_DB, but not below the noise floor
    (a quiet recording then still shows its calls, not its hiss)."""
    db = 10 * np.log10(np.maximum(power, 1e-12))
    if db.size == 0:
        return db, -100.0, 0.0
    top = float(np.percentile(db, 99.9))
    return db, max(top - DYNAMIC_RANGE_DB, float(np.percentile(db, 25))), top


class TimePool:
    """Rows (time frames) appended in order and max-pooled in time, so that at most 2 × `limit` rows are kept
    however long the input: when full, neighbouring pairs merge, and each row stands for twice as many frames.
    Max, not mean: a short call stays as loud in an 8-hour picture as in a 1-minute one."""

    def __init__(self, limit: int):
        self.limit, self.factor, self.frames = limit, 1, 0
        self._rows: list[np.ndarray] = []       # pooled rows, each of `factor` frames
        self._partial: np.ndarray | None = None  # max of the frames of the row being filled
        self._partial_n = 0

    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        self.frames += len(x)
        while len(x):
            if self._partial_n == 0 and len(x) >= self.factor:      # whole rows at once
                whole = len(x) // self.factor * self.factor
                self._rows.extend(x[:whole].reshape(-1, self.factor, x.shape[1]).max(axis=1))
                x = x[whole:]
            else:                                                  # into the row being filled
                take = min(len(x), self.factor - self._partial_n)
                m, x = x[:take].max(axis=0), x[take:]
                self._partial = m if self._partial is None else np.maximum(self._partial, m)
                self._partial_n += take
                if self._partial_n == self.factor:
                    self._rows.append(self._partial)
                    self._partial, self._partial_n = None, 0
            while len(self._rows) >= 2 * self.limit:
                self._halve()

    def _halve(self) -> None:
        rows = np.stack(self._rows)
        even = len(rows) // 2 * 2
        self._rows = list(rows[:even].reshape(-1, 2, rows.shape[1]).max(axis=1))
        if even < len(rows):       # an odd row out starts the next (twice as long) row, with the partial one
            last = rows[-1] if self._partial is None else np.maximum(rows[-1], self._partial)
            self._partial, self._partial_n = last, self.factor + self._partial_n
        self.factor *= 2

    def rows(self) -> np.ndarray:
        """Every row, the partial last one included (shape (rows, D)); row i covers frames i·factor onwards."""
        rows = self._rows + ([self._partial] if self._partial is not None else [])
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


class StreamingSpectrogram:
    """Blocks of a recording in → max-pooled power spectrogram out, frame k centred on sample k·hop."""

    def __init__(self, sample_rate: int, fmin: float, fmax: float, columns: int):
        self.sr, self.n_fft = sample_rate, fft_size(sample_rate)
        self.hop = self.n_fft // 2
        self.bins, self.freqs = band(sample_rate, self.n_fft, fmin, fmax)
        self.pool = TimePool(columns)
        self._carry = np.zeros(self.n_fft // 2, np.float32)   # half a frame of silence centres frame 0 on 0 s

    def push(self, x: np.ndarray) -> None:
        buf = np.concatenate([self._carry, x])
        p = power_frames(buf, self.n_fft, self.hop, self.bins)
        self.pool.push(p)
        self._carry = buf[len(p) * self.hop:]

    def finish(self) -> Spectrogram:
        self.push(np.zeros(self.n_fft // 2 + self.hop, np.float32))   # the last frames, centred on the end
        col_s = self.pool.factor * self.hop / self.sr
        return Spectrogram(self.pool.rows(), col_s, -self.hop / 2 / self.sr, self.freqs)


@dataclass
class Spectrogram:
    """Power (columns, bins); column i spans t0 + i·col_s to t0 + (i + 1)·col_s seconds; bins at `freqs` Hz."""
    power: np.ndarray
    col_s: float
    t0: float
    freqs: np.ndarray

    def column(self, t: float) -> int:
        return int(np.floor((t - self.t0) / self.col_s))

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """For imshow: seconds left and right, kHz bottom and top."""
        return (self.t0, self.t0 + len(self.power) * self.col_s, self.freqs[0] / 1e3, self.freqs[-1] / 1e3)


# ---- one event
def when(event: Event) -> str:
    """The event's time for a title: local wall time where there is one, else the recording and its second."""
    if event.wall_onset is not None:
        return datetime.fromtimestamp(event.wall_onset).strftime("%Y-%m-%d %H:%M:%S")
    return f"{Path(event.source).name or 'stream'} at {event.onset_s:.1f} s"


def event_picture(audio: EventAudio, event: Event, path: Path, fmin: float = 50.0, fmax: float = 14000.0) -> None:
    """A small spectrogram PNG of the clip (time in seconds into the clip, as a player shows it), the event's
    span left bright and the pre- and post-roll dimmed, titled with species, confidence and time."""
    from matplotlib.figure import Figure

    sr = audio.sample_rate
    n_fft = fft_size(sr)
    hop = n_fft // 4
    bins, freqs = band(sr, n_fft, fmin, fmax)
    x = np.concatenate([np.zeros(n_fft // 2, np.float32), audio.samples, np.zeros(n_fft // 2, np.float32)])
    spec = Spectrogram(power_frames(x, n_fft, hop, bins), hop / sr, -hop / 2 / sr, freqs)   # frame k at k·hop
    db, lo, hi = to_db(spec.power)
    length = len(audio.samples) / sr
    on, off = event.onset_s - audio.start_s, event.offset_s - audio.start_s

    fig = Figure(figsize=(6.4, 3.0), dpi=100)
    ax = fig.add_axes((0.09, 0.15, 0.89, 0.75))    # fixed margins: a layout engine would double the drawing time
    ax.imshow(db.T, origin="lower", aspect="auto", cmap=CMAP, vmin=lo, vmax=hi, interpolation="nearest",
              extent=spec.extent)
    for a, b in ((0.0, on), (off, length)):          # dim the pre- and post-roll: the event is what stays bright
        if b > a:
            ax.axvspan(a, b, color="black", alpha=0.45, lw=0)
    for t in (on, off):
        ax.axvline(t, color="white", lw=1.0, ls="--")
    ax.set_xlim(0, length)
    ax.set_xlabel("seconds in clip")
    ax.set_ylabel("kHz")
    code = f" ({event.species})" if event.species != event.name else ""
    ax.set_title(f"{event.name}{code}  {event.peak:.2f}  ·  {when(event)}", fontsize=10)
    save_png(fig, Path(path))


# ---- the whole recording
class RecordingPlot(SinkBase):
    """`--plot`: a Sink and ScoreSink for one recording. It keeps the events and the stitched score frames as
    they come (the scores max-pooled to the picture's width, so a night-long file needs little memory), and on
    `close()` reads the recording again, through FileSource like the detector, and draws its spectrogram with
    every event as a labelled box, and under it the score tracks of the species that have events (and of the
    strongest few that have none), on one time axis. Written whole (temporary name, then rename).

    One recording: the first stream it hears of is the one drawn (the command line allows one file)."""

    columns = 2000          # at most twice this many spectrogram and score columns (TimePool)
    extra_tracks = 3        # the strongest species without events, shown too: what almost became an event
    max_tracks = 12

    def __init__(self, out: Path, recording: Path, names: list[str], sample_rate: int, fmin: float = 50.0,
                 fmax: float = 14000.0, channel: int | None = None):
        self.out, self.recording = Path(out), Path(recording)
        if self.out.suffix.lower() != ".png":
            raise OptionError(f"--plot {out}: the picture is a PNG; name it *.png")
        writable_folder(self.out.parent, "--plot")
        self.names, self.sr, self.fmin, self.fmax, self.channel = list(names), sample_rate, fmin, fmax, channel
        self._index = {n: i for i, n in enumerate(self.names)}
        self.events: list[tuple[Event, int | None]] = []     # each with its species' index in `names`
        self.source: str | None = None
        self.scores = TimePool(self.columns)
        self.frame_s: float | None = None
        self._next_frame = 0
        self._closed = False

    def _mine(self, source: str) -> bool:
        if self.source is None:
            self.source = source
        return source == self.source

    def on_event(self, event: Event, audio: EventAudio | None = None) -> None:
        if self._mine(event.source):
            self.events.append((event, self._index.get(event.name, self._index.get(event.species))))

    def on_scores(self, source: str, first_frame: int, frames: np.ndarray, frame_s: float) -> None:
        if not self._mine(source) or not len(frames):
            return
        self.frame_s = frame_s
        if first_frame > self._next_frame:      # the contract says contiguous; a gap would still land in place
            self.scores.push(np.zeros((first_frame - self._next_frame, frames.shape[1]), np.float32))
        self.scores.push(frames)
        self._next_frame = first_frame + len(frames)

    def close(self) -> None:
        if self._closed or self.source is None:   # no stream ever opened: its own error line says why
            return
        self._closed = True
        try:
            spec = self._spectrogram()
        except BirdliveError as e:
            log.warning(f"--plot: no picture of {self.recording}: {e}")
            return
        fig = draw_recording(spec, self.events, self._tracks(), self.names,
                             title=f"{self.recording.name}: {len(self.events)} events")
        try:
            save_png(fig, self.out)
        except OSError as e:
            log.warning(f"--plot: cannot write {self.out} ({e.strerror or e})")

    def _spectrogram(self) -> Spectrogram:
        """The recording decoded once more by the detector's own reader: what is drawn is what was heard. A
        file that breaks off mid-way is drawn up to where it breaks (the detector has said so already)."""
        from birdlive.audio import FileSource
        stft = StreamingSpectrogram(self.sr, self.fmin, self.fmax, self.columns)
        source = FileSource(self.recording, self.sr, block_s=16.0, channel=self.channel)
        try:
            for block in source:
                stft.push(block.samples)
        except BirdliveError:
            pass
        finally:
            source.close()
        return stft.finish()

    def _tracks(self) -> Tracks | None:
        """The species with events, in order of their first one, then the strongest few of the rest."""
        if self.frame_s is None:
            return None
        scores = self.scores.rows()
        order: list[int] = []
        for _, k in sorted(self.events, key=lambda ek: ek[0].onset_s):
            if k is not None and k not in order:
                order.append(k)
        order = order[:self.max_tracks]
        rest = [int(k) for k in np.argsort(-scores.max(axis=0)) if int(k) not in order]
        order += rest[:max(0, min(self.extra_tracks, self.max_tracks - len(order)))]
        return Tracks(scores, self.scores.factor * self.frame_s, order)


@dataclass
class Tracks:
    """Score tracks to draw: pooled scores (columns, K), the seconds per column, and which species, in order."""
    scores: np.ndarray
    col_s: float
    species: list[int]


def above_floor(power: np.ndarray) -> np.ndarray:
    """dB above each frequency's noise floor (its median over the recording). Over minutes, wind and hum
    would take most of the colour range; with them levelled out, the calls stand out at any length. A band far
    quieter than the rest (above the top of a file recorded at a lower rate) keeps the rest's floor: its
    near-silence is not raised to look like sound."""
    db = 10 * np.log10(np.maximum(power, 1e-12))
    if not len(db):
        return db
    floor = np.median(db, axis=0)
    return db - np.maximum(floor, np.median(floor) - 20.0)


def draw_recording(spec: Spectrogram, events: list[tuple[Event, int | None]], tracks: Tracks | None,
                   names: list[str], title: str):
    """The figure: spectrogram on top, one strip per score track below, the time axis shared."""
    from matplotlib.figure import Figure

    duration = max(len(spec.power) * spec.col_s, 1.0)
    n = len(tracks.species) if tracks else 0
    width = float(np.clip(duration / 3, 12, 40))    # ~33 px a second up to 2 minutes, then denser: 4000 px at most
    fig = Figure(figsize=(width, 3.6 + 0.45 * n), dpi=100, layout="constrained")
    axes = fig.subplots(n + 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3.6] + [0.45] * n, "hspace": 0.02})[:, 0]
    colours = species_colours(tracks.species if tracks else [])
    excess = above_floor(spec.power)
    ax = axes[0]
    if len(excess):
        top = max(20.0, float(np.percentile(excess, 99.9)))
        ax.imshow(excess.T, origin="lower", aspect="auto", cmap=CMAP, vmin=0, vmax=top, interpolation="nearest",
                  extent=spec.extent)
    boxes = EventBoxes(ax, excess, spec, duration, width)
    for e, k in sorted(events, key=lambda ek: ek[0].onset_s):
        boxes.add(e, colours.get(k, "0.8") if k is not None else "0.8")
    ax.set_ylabel("kHz")
    ax.set_title(title, fontsize=11, loc="left")
    if tracks:
        draw_tracks(axes[1:], tracks, events, names, colours)
    ax.set_xlim(0, duration)
    time_axis(axes[-1], duration, width)
    return fig


def time_axis(ax, duration: float, width_in: float) -> None:
    """Seconds up to 10 minutes, h:mm:ss beyond; a tick about every inch and a half, on a round step."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator
    if duration <= 600:
        ax.set_xlabel("seconds")
        return
    want = duration / (width_in / 1.5)
    step = next((s for s in (30, 60, 120, 300, 600, 900, 1800, 3600) if s >= want), 7200)
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{int(t) // 3600}:{int(t) // 60 % 60:02d}:"
                                                            f"{int(t) % 60:02d}"))
    ax.set_xlabel("h:mm:ss")


def species_colours(species: list[int]) -> dict[int, tuple]:
    """One colour per drawn species, the same for its boxes and its score strip."""
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(species) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(species)}


def draw_tracks(axes, tracks: Tracks, events: list[tuple[Event, int | None]], names: list[str],
                colours: dict) -> None:
    """One strip per species: its score (0–1) as steps, its events shaded, its name on the left."""
    edges = np.arange(len(tracks.scores) + 1) * tracks.col_s     # column i: frames i·factor onwards, from 0 s
    for ax, k in zip(axes, tracks.species):
        c = colours[k]
        ax.stairs(tracks.scores[:, k], edges, fill=True, color=c, alpha=0.35)
        ax.stairs(tracks.scores[:, k], edges, color=c, lw=0.9)
        for e, ke in events:
            if ke == k:
                ax.axvspan(e.onset_s, e.offset_s, color=c, alpha=0.18, lw=0)
        ax.set_ylim(0, 1.05)
        ax.set_yticks([0, 1])
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel(names[k], rotation=0, ha="right", va="center", fontsize=8)
        ax.grid(axis="x", alpha=0.3)


class EventBoxes:
    """Each event as a box over the call: its time span, and the frequency band where the spectrogram stands
    out of the recording's noise floor during it. Labels (name and confidence) go above the box, or below it if
    that place is taken, or are left out when both are (a long, busy recording: the colours and the score
    strips still say which species)."""

    font = 7

    def __init__(self, ax, excess: np.ndarray, spec: Spectrogram, duration: float, width_in: float):
        self.ax, self.excess, self.spec = ax, excess, spec             # excess: dB above the noise floor
        self.khz = (spec.freqs[0] / 1e3, spec.freqs[-1] / 1e3)
        self.s_per_pt = duration / (width_in * 72 * 0.9)               # label sizes in data units, roughly
        self.khz_per_pt = (self.khz[1] - self.khz[0]) / (3.6 * 72 * 0.75)
        self.taken: list[tuple[float, float, float, float]] = []

    def add(self, e: Event, colour) -> None:
        from matplotlib.patches import Rectangle
        f0, f1 = self.call_band(e)
        pad = 2 * self.s_per_pt        # a little room either side, so that the box's edges do not hide the call
        t0, t1 = e.onset_s - pad, e.offset_s + pad
        self.ax.add_patch(Rectangle((t0, f0), t1 - t0, f1 - f0, fill=False, ec=colour, lw=1.0))
        text = f"{e.name} {e.peak:.2f}"
        w, h = len(text) * self.font * 0.6 * self.s_per_pt, self.font * 1.4 * self.khz_per_pt
        for y, va in ((f1, "bottom"), (f0, "top")):             # above the box, else below it, else no label
            spot = (t0, t0 + w, y, y + h) if va == "bottom" else (t0, t0 + w, y - h, y)
            inside = spot[2] >= self.khz[0] and spot[3] <= self.khz[1]
            if inside and not any(_overlap(spot, other) for other in self.taken):
                self.taken.append(spot)
                self.ax.text(t0, y, text, fontsize=self.font, color="white", va=va, ha="left",
                             bbox={"boxstyle": "square,pad=0.1", "fc": colour, "ec": "none", "alpha": 0.8})
                return

    def call_band(self, e: Event) -> tuple[float, float]:
        """kHz from the lowest to the highest bin that rises 12 dB above the noise floor, and within 30 dB of
        the call's loudest bin, during the event; the whole band where nothing does."""
        c0 = max(0, self.spec.column(e.onset_s))
        c1 = min(len(self.excess), max(c0, self.spec.column(e.offset_s)) + 1)
        if c0 >= c1:
            return self.khz
        excess = self.excess[c0:c1].max(axis=0)
        loud = np.flatnonzero((excess >= 12) & (excess >= excess.max() - 30))
        if not len(loud):
            return self.khz
        freqs, pad = self.spec.freqs / 1e3, 2 * (self.spec.freqs[1] - self.spec.freqs[0]) / 1e3
        return max(self.khz[0], freqs[loud[0]] - pad), min(self.khz[1], freqs[loud[-1]] + pad)


def _overlap(a: tuple, b: tuple) -> bool:
    """Two (x0, x1, y0, y1) rectangles overlap."""
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]
