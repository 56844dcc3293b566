"""StreamState: everything one source needs between blocks, in numpy; the shared scorer does the torch work.

    samples → audio ring ──(frontend_chunk → scorer.logmel → add_logmel)──→ log-mel ring
            → ready_windows (5 s of log-mel every hop) ──(scorer.score → add_scores)──→ stitcher → smoother
            → filter → events (+ their audio, still in the audio ring)

Each sample's log-mel is computed once; windows are cut from the log-mel. A stream has its own timeline:
stream time counts samples (gaps a source reports are filled with silence, so time stays true), wall time comes
from the anchors live sources stamp on their blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from birdlive.errors import OptionError
from birdlive.model.config import ModelConfig

from .clock import WallClock
from .events import Event, EventAudio, EventFilter
from .ringbuffer import RingBuffer
from .smoother import EventSmoother, SmootherParams
from .stitcher import ScoreStitcher
from .thresholds import SpeciesThresholds, resolve_thresholds


def default_params(cfg: ModelConfig, threshold_on: float | None = None, threshold_off: float | None = None,
                   species_thresholds: SpeciesThresholds | None = None, **overrides) -> SmootherParams:
    """Smoother settings for `cfg`'s model, with one on/off threshold per species.

    Most specific wins: `species_thresholds` ({species index: (on, off or None)}, from `--thresholds FILE` via
    `load_thresholds`) > `threshold_on`/`threshold_off` (the global flags) > the checkpoint's calibrated
    per-species pairs > its global pair; a lower level's value that would put off above on moves to keep the
    checkpoint's off/on ratio (details: `birdlive.streamer.core.thresholds`). Other overrides (`min_duration_s`, …)
    replace the `SmootherParams` defaults; `None` ones are ignored."""
    on, off = resolve_thresholds(cfg, threshold_on, threshold_off, species_thresholds)
    p = SmootherParams(threshold_on=on, threshold_off=off)
    for k, v in overrides.items():
        if v is not None:
            setattr(p, k, v)
    return p


def check_hop(cfg: ModelConfig, hop_s: float) -> None:
    """The hop must be a whole number of output frames (so windows stitch frame for frame) and of log-mel
    frames (so windows are cut from the log-mel), and at most a window."""
    step = cfg.frame_s
    for grid in (cfg.out_fps, cfg.sample_rate / cfg.hop_length):
        n = hop_s * grid
        if abs(n - round(n)) > 1e-6:
            raise OptionError(f"--hop must be a multiple of {step:g} s between {step:g} and {cfg.window_s:g} s")
    if not 0 < hop_s <= cfg.window_s:
        raise OptionError(f"--hop must be a multiple of {step:g} s between {step:g} and {cfg.window_s:g} s")


@dataclass
class WindowCut:
    """One window of a stream, as log-mel frames, ready for the network."""
    start_sample: int
    valid: int                  # leading samples that are real audio (the last window of a stream is padded)
    logmel: np.ndarray          # (frames, n_mels) raw log-mel


class StreamState:
    """One source's state. Feed it blocks (`push`); the runner moves audio and log-mel through the scorer."""

    def __init__(self, name: str, cfg: ModelConfig, hop_s: float = 1.0, params: SmootherParams | None = None,
                 event_filter: EventFilter | None = None, keep_audio_s: float | None = None,
                 max_block_s: float = 16.0):
        check_hop(cfg, hop_s)
        self.name, self.cfg = name, cfg
        self.sr, self.mel_hop, self.ctx = cfg.sample_rate, cfg.hop_length, cfg.n_fft // 2
        self.hop_samples = int(round(hop_s * cfg.sample_rate))
        self.window_frames = cfg.window_samples // cfg.hop_length + 1     # 501: frames centred on both ends
        self.params = params or default_params(cfg)
        self.max_block = int(max_block_s * cfg.sample_rate)
        # The audio ring keeps an event's audio until the event closes: the longest event, the window the
        # stitcher waits for, the merge gap and median, pre-/post-roll, and a block that may arrive meanwhile.
        keep_s = keep_audio_s or (self.params.max_event_s + cfg.window_s + self.params.merge_gap_s
                                  + self.params.median_s + 2 * 5.0 + max_block_s)
        self.audio = RingBuffer(int(keep_s * cfg.sample_rate))
        self.keep_s = keep_s
        self.native: RingBuffer | None = None   # the source's own-rate audio, for event clips (see add_native)
        self.native_rate = 0
        # One tick may turn everything the audio ring holds into frames before any window is cut.
        self.mel = RingBuffer(self.audio.capacity // cfg.hop_length + self.window_frames + 2, (cfg.n_mels,))
        self.clock = WallClock(cfg.sample_rate)
        self.stitcher = ScoreStitcher(cfg.num_classes, int(round(hop_s * cfg.out_fps)))
        self.smoother = EventSmoother(cfg.labels, cfg.names, cfg.frame_s, self.params, source=name,
                                      clock=self.clock)
        self.filter = event_filter or EventFilter()
        self.keep_scores = False       # a score sink wants the stitched frames (take_scores)
        self.final_scores: list[tuple[int, np.ndarray]] = []
        self.next_window = 0           # start sample of the next window to cut
        self.input_ended = False
        self.tail_cut = False
        # The live view's "now": each species' best score over the newest hop of the newest window. Stitched
        # frames are final only a window later; this is the freshest (if less settled) estimate.
        self.latest_scores = np.zeros(cfg.num_classes, np.float32)
        self.windows_scored = 0
        self.events = 0                # events handed out (after the filter)
        self.level_dbfs = -120.0

    # ---- audio in
    @property
    def audio_s(self) -> float:
        return self.audio.end / self.sr

    @property
    def room(self) -> int:
        """Samples `push` can take before audio not yet turned into log-mel would be overwritten."""
        oldest_needed = max(0, self.mel.end * self.mel_hop - self.ctx)
        return self.audio.capacity - (self.audio.end - oldest_needed)

    def pieces(self, samples: np.ndarray, start_sample: int | None = None,
               wall_time: float | None = None) -> list[tuple[np.ndarray, float | None]]:
        """A source's block as pieces for `push`, one per tick. A `start_sample` past the end is a gap the source
        could not fill: silence keeps stream time true. One before the end overlaps what is here: dropped."""
        end = self.audio.end
        start = end if start_sample is None else int(start_sample)
        if start < end:
            samples = samples[end - start:]
            wall_time = None if wall_time is None else wall_time + (end - start) / self.sr
            start = end
        out: list[tuple[np.ndarray, float | None]] = []
        gap = start - end
        while gap > 0:
            k = min(gap, self.max_block)
            out.append((np.zeros(k, np.float32), None))
            gap -= k
        for i in range(0, len(samples), self.max_block):
            out.append((samples[i:i + self.max_block], None if wall_time is None else wall_time + i / self.sr))
        return out

    def push(self, samples: np.ndarray, wall_time: float | None = None) -> None:
        """Append float32 mono samples at the model's rate; `wall_time` is the unix time of samples[0]."""
        if self.input_ended:
            raise RuntimeError(f"{self.name}: push after end of input")
        if len(samples) > self.room:
            raise ValueError(f"{self.name}: a block of {len(samples)} samples does not fit; push `pieces`, "
                             f"one per tick")
        self.clock.anchor(self.audio.end, wall_time)
        self.audio.write(samples)
        if len(samples):
            rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
            self.level_dbfs = 20 * math.log10(max(rms, 1e-6))

    def add_native(self, samples: np.ndarray, rate: int, start_sample: int) -> None:
        """The source's own-rate audio of the model-rate block starting at `start_sample`, kept only for event
        audio: a gap the source could not fill is silence, an overlap is dropped (as `pieces` does)."""
        if self.native is None or rate != self.native_rate:
            self.native, self.native_rate = RingBuffer(int(self.keep_s * rate)), int(rate)
            self.native.end = int(round(start_sample * rate / self.sr))   # a ring starts empty at its stream time
        start = int(round(start_sample * rate / self.sr))
        if start > self.native.end:
            self.native.write_zeros(start - self.native.end)
        self.native.write(samples[max(0, self.native.end - start):])

    def end_input(self) -> None:
        """No more audio: the last window is cut zero-padded, and `finish` may follow the next tick."""
        self.input_ended = True

    # ---- log-mel: the scorer turns `frontend_chunk` into frames, handed back through `add_logmel`
    def frontend_chunk(self) -> np.ndarray | None:
        """The samples under the log-mel frames now due, with n_fft/2 of context on each side, or None.

        Due are the frames whose context is all here; after `end_input`, those the last window needs, with
        silence past the end. The stream's first frames see a reflection, as a clip's first frames do in
        training (`LogMelFrontend.forward`)."""
        first = self.mel.end
        if self.input_ended:
            last = self._frames_owed_at_end() - 1
        else:   # one sample more than the context: frame 0's reflection reaches sample n_fft/2
            last = (self.audio.end - self.ctx - 1) // self.mel_hop
        # Never write frames over ones the next window still needs: at the end of a stream up to a whole audio
        # ring of unconverted samples plus the padded last window are owed at once, more than the log-mel ring
        # holds beyond the oldest uncut window. The rest comes on the next tick, after these windows are cut.
        last = min(last, self.next_window // self.mel_hop + self.mel.capacity - 1)
        if last < first:
            return None
        lo, hi = first * self.mel_hop - self.ctx, last * self.mel_hop + self.ctx + 1
        x = np.zeros(hi - lo, np.float32)
        a, b = max(lo, 0), min(hi, self.audio.end)
        if b > a:
            self.audio.read(a, b - a, x[a - lo:b - lo])
        if lo < 0:
            i = np.arange(-lo)
            x[i] = x[-2 * lo - i]           # sample -s is sample s
        return x[:-1]

    def add_logmel(self, frames: np.ndarray) -> None:
        self.mel.write(frames)

    # ---- windows
    def _mel_ready(self, start_sample: int) -> bool:
        return self.mel.end >= start_sample // self.mel_hop + self.window_frames

    def _tail_start(self) -> int | None:
        """Start of the zero-padded window that covers the audio after the last full window, if one is owed."""
        w, end, k = self.cfg.window_samples, self.audio.end, self.next_window
        while k + w <= end:
            k += self.hop_samples
        last_covered = k - self.hop_samples + w if k > 0 else 0
        return k if end > last_covered and k < end else None

    def _frames_owed_at_end(self) -> int:
        tail = self._tail_start()
        if tail is not None:
            return tail // self.mel_hop + self.window_frames
        last_full = self.next_window - self.hop_samples
        while last_full + self.hop_samples + self.cfg.window_samples <= self.audio.end:
            last_full += self.hop_samples
        return last_full // self.mel_hop + self.window_frames if last_full >= 0 else 0

    def ready_windows(self) -> list[WindowCut]:
        """Every window whose log-mel is complete, in order; after `end_input`, the padded last one too."""
        out: list[WindowCut] = []
        w = self.cfg.window_samples
        while self.next_window + w <= self.audio.end and self._mel_ready(self.next_window):
            out.append(self._cut(self.next_window, w))
        if self.input_ended and not self.tail_cut and self.next_window + w > self.audio.end:
            tail = self._tail_start()
            if tail is None or self._mel_ready(tail):
                if tail is not None:
                    out.append(self._cut(tail, self.audio.end - tail))
                self.tail_cut = True
        return out

    def _cut(self, start: int, valid: int) -> WindowCut:
        frames = self.mel.read(start // self.mel_hop, self.window_frames)
        self.next_window = start + self.hop_samples
        return WindowCut(start, valid, frames)

    # ---- scores → events
    def add_scores(self, cut: WindowCut, scores: np.ndarray) -> list[Event]:
        """The network's framewise probabilities (n_out, K) for `cut` → the events that became final."""
        fps = self.cfg.out_fps
        start_frame = int(round(cut.start_sample * fps / self.sr))
        valid_frames = math.ceil(cut.valid * fps / self.sr - 1e-9)
        first, frames = self.stitcher.add(start_frame, scores, valid_frames)
        self._keep_scores(first, frames)
        self.latest_scores = scores[max(0, valid_frames - self.stitcher.hop_frames):valid_frames].max(axis=0)
        self.windows_scored += 1
        return self._smooth(frames)

    @property
    def drained(self) -> bool:
        """Input ended and every window it owed has been scored: `finish` gives the last events."""
        return self.input_ended and self.tail_cut

    def finish(self) -> list[Event]:
        """The events still open or pending at the end of the stream."""
        first, frames = self.stitcher.finish()
        self._keep_scores(first, frames)
        return self._counted(self.smoother.push(frames) + self.smoother.finish())

    def _keep_scores(self, first: int, frames: np.ndarray) -> None:
        if self.keep_scores and len(frames):
            self.final_scores.append((first, frames))

    def take_scores(self) -> list[tuple[int, np.ndarray]]:
        """The stitched score frames that became final since the last call: (first frame, (n, K) frames)."""
        out, self.final_scores = self.final_scores, []
        return out

    def _smooth(self, frames: np.ndarray) -> list[Event]:
        return self._counted(self.smoother.push(frames))

    def _counted(self, events: list[Event]) -> list[Event]:
        kept = [e for e in events if self.filter(e)]
        self.events += len(kept)
        return kept

    def event_audio(self, event: Event, pre_roll_s: float, post_roll_s: float) -> EventAudio:
        """The event's audio with pre- and post-roll as far as the stream has them: at the source's own rate
        where the source gave it (a 48 kHz recorder's clip keeps its top octave), else from the model-rate ring."""
        ring, sr = (self.native, self.native_rate) if self.native is not None else (self.audio, self.sr)
        lo = max(ring.start, int(round((event.onset_s - pre_roll_s) * sr)))
        hi = max(lo, min(ring.end, int(round((event.offset_s + post_roll_s) * sr))))
        return EventAudio(ring.read(lo, hi - lo), sr, lo / sr)
