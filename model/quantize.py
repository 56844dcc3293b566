"""STEM.int8.onnx: the checkpoint's graph (STEM.onnx, `birdlive.model.export`) with its backbone in int8, made by
ONNX Runtime's static quantisation and calibrated on real log-mel windows.

- Calibration windows: from each given audio file (in the order given; `calibration_files`), decoded as replay
  hears it (`birdlive.audio.FileSource`), the back-to-back 5 s windows that lie whole in it, `PER_FILE` of them
  evenly spaced (fewer where the files are many: `MAX_WINDOWS` / files, at least one), at most `MAX_WINDOWS` in
  all; their log-mel is the lean runtime's (`birdlive.model.dsp.LogMel`), computed with numpy's BLAS on one
  thread as the runtime computes it (`OnnxScorer`). A fixed list of files gives the same windows, hence the same
  ranges, hence the same bytes: OpenBLAS's mel matmul rounds differently on one thread than on several, so
  without that limit the bytes depended on the machine's cores and on whether the process had already loaded a
  scorer (which limits BLAS for the whole process).
- What is quantised: the convolutions of the backbone (nodes under `/backbone/`: about 90 % of the float graph's
  time) but its stem and first two stages (`FLOAT_BACKBONE`), weights int8 per output channel, activations uint8,
  in QDQ form (ONNX Runtime fuses each Dequantize → Conv → Quantize into one integer convolution).
  `reduce_range`: 7-bit weights, because AVX2's u8 × s8 multiply-add (vpmaddubsw) saturates 16-bit sums of
  full-range products; without VNNI that is the kernel ONNX Runtime uses. The head (frequency pooling, GRU,
  attention, sigmoid) stays float: it is a few per cent of the time and the scores come out of it.
- Calibration method: MinMax (measured against Percentile and Entropy on validation windows that were not
  calibration windows: benchmarks/quantize_gate.py, README).

Needs the `onnx` package (the torch extra: `birdlive export` runs there); the lean runtime only loads the result.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from birdlive.errors import BirdliveError
from birdlive.files import atomic_path, is_audio

from .checkpoint import DEFAULT_CHECKPOINT, checkpoint_paths, graph_path, int8_graph_path, load_config
from .config import ModelConfig
from .dsp import LogMel

PER_FILE = 4            # windows per calibration file: many files, few windows each, spreads over recordings
MAX_WINDOWS = 256       # ranges settle well before (MinMax: the largest values seen)
BATCH = 16
BACKBONE = "/backbone/"
# Kept float: the stem (its input is the log-mel itself, dB over a wide range) and the first two stages (the
# largest maps, the fewest channels). Model v3, on validation windows that were not calibration windows: the
# scores of float's top 5 species moved 0.026 on average with the whole backbone int8, 0.019 with the stem and
# the first stage float, 0.011 with these, 0.005 with the third stage float too (1.45x and 1.3x the float speed
# per batch against 2x). v3's gate still fails with these float (by one test recording of 58; README).
FLOAT_BACKBONE = ("/backbone/conv_stem/", "/backbone/bn1/", "/backbone/blocks.0/", "/backbone/blocks.1/")
# The embedded model's calibration: its training run's validation recordings (xc-puerto-rico and ovenbird-alberta,
# never trained on; model/weights/default_v3_run/split.json), one path a line relative to this list
DEFAULT_CALIBRATION = DEFAULT_CHECKPOINT.with_name("default_calibration.txt")


class CalibrationError(BirdliveError):
    """Calibration input that cannot be used; the message says why, in one line."""


def calibration_files(source: str | Path) -> list[Path]:
    """The audio files of `source`: a folder (every audio file under it, sorted by path) or a text file that lists
    one audio file a line (relative to that text file's folder; `#` starts a comment), in its order."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and is_audio(f))
    elif p.is_file() and not is_audio(p):
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise CalibrationError(f"--calibrate {source}: cannot read it as a list of audio files ({e})") from None
        files = [p.parent / ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CalibrationError(f"--calibrate {source}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    elif p.is_file():
        files = [p]
    else:
        raise CalibrationError(f"--calibrate {source}: no such file or folder")
    if not files:
        raise CalibrationError(f"--calibrate {source}: no audio files in it")
    return files


def calibration_windows(cfg: ModelConfig, files: list[Path], per_file: int = PER_FILE,
                        max_windows: int = MAX_WINDOWS) -> np.ndarray:
    """(N, 1, frames, n_mels) float32 log-mel windows of `files` (see the module's docstring)."""
    from threadpoolctl import threadpool_limits

    from birdlive.audio import AudioSourceError, FileSource

    with threadpool_limits(1, user_api="blas"):       # the same floats on any machine, in any process
        frontend = LogMel(cfg)
        ctx, window = frontend.context, cfg.window_samples
        per_file = min(per_file, max(1, max_windows // len(files)))     # many files: fewer windows each, all heard
        out: list[np.ndarray] = []
        for f in files:
            try:
                wave = np.concatenate([b.samples for b in FileSource(f, cfg.sample_rate)] or [np.zeros(0, np.float32)])
            except AudioSourceError as e:
                raise CalibrationError(f"calibration file {f}: cannot decode it ({e})") from None
            whole = (len(wave) - 2 * ctx) // window        # windows with their frames' context inside the file
            picks = np.linspace(0, whole - 1, min(per_file, whole)).round().astype(int) if whole > 0 else []
            for k in np.unique(picks):
                s = ctx + int(k) * window
                out.append(frontend.frames(wave[s - ctx:s + window + ctx]))
            if len(out) >= max_windows:
                break
        if not out:
            raise CalibrationError(f"no calibration window: the {len(files)} file(s) are all shorter than "
                                   f"{cfg.window_s:g} s")
    return np.stack(out[:max_windows])[:, None].astype(np.float32)


def _batches(name: str, windows: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one size: the histogram calibrators stack every batch's values, which must be of one shape (the
    last windows, fewer than a batch, are left out; fewer than a batch in all make one batch)."""
    for i in range(0, max(len(windows) - BATCH + 1, 1), BATCH):
        yield {name: windows[i:i + BATCH]}


def quantize_graph(float_graph: str | Path, out: str | Path, windows: np.ndarray, method: str = "minmax",
                   keep_float: tuple[str, ...] = FLOAT_BACKBONE) -> Path:
    """Write the int8 graph of `float_graph` to `out` (atomically), calibrated on `windows`; returns `out`.
    Quantised: the backbone's nodes but those whose names start with one of `keep_float`."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    graph = onnx.load(str(float_graph))
    name = graph.graph.input[0].name
    exclude = [n.name for n in graph.graph.node if not n.name.startswith(BACKBONE) or n.name.startswith(keep_float)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = _batches(name, windows)

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="birdlive-int8-") as tmp, atomic_path(out) as target:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference only (the graph is already optimised; ONNX Runtime's symbolic shapes trip on the GRU)
        quant_pre_process(str(float_graph), str(pre), skip_symbolic_shape=True, skip_optimization=True)
        quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=exclude)
    return Path(out)


def calibration_for(checkpoint: str | Path, calibrate: str | Path | None = None) -> list[Path]:
    """The calibration files of `calibrate` (`calibration_files`); without it, the embedded model's own
    (`DEFAULT_CALIBRATION`), and for any other checkpoint a `CalibrationError`."""
    if calibrate is None:
        if checkpoint_paths(checkpoint)[0].resolve() != checkpoint_paths(DEFAULT_CHECKPOINT)[0]:
            raise CalibrationError("--int8 needs --calibrate: a folder of recordings like the ones the model will "
                                   "hear (its validation recordings), or a text file listing them")
        calibrate = DEFAULT_CALIBRATION
    return calibration_files(calibrate)


def export_int8(checkpoint: str | Path, calibrate: str | Path | list[Path] | None = None) -> Path:
    """STEM.int8.onnx from the checkpoint's STEM.onnx (`birdlive export`), calibrated on `calibrate` (files, or a
    folder or list of them: `calibration_for`). Returns its path."""
    files = calibrate if isinstance(calibrate, list) else calibration_for(checkpoint, calibrate)
    windows = calibration_windows(load_config(checkpoint), files)
    return quantize_graph(graph_path(checkpoint), int8_graph_path(checkpoint), windows)
