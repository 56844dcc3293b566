"""SharedScorer: the torch side of every stream at once — log-mel of new audio, then the network over windows
(the CUDA path and training's evaluation; on a CPU the lean runtime scores with `OnnxScorer`)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from birdlive.model import BirdSED
from birdlive.model.fuse import inference_copy


class SharedScorer:
    """One model, one device, batches drawn from all streams.

    Each tick the runner hands it the new audio of every stream (`logmel`, batched by length) and then the
    ready windows of every stream (`score`, in batches of `batch_size`): two microphones share one forward
    pass, and a GPU sees as many windows as there are streams.
    """

    def __init__(self, model: BirdSED, batch_size: int | None = None):
        self.device = next(model.parameters()).device
        self.model = inference_copy(model)     # BatchNorm folded, channels-last: ~1.5× on a CPU
        # CPU: batches past 16 windows buy nothing and cost latency; a GPU wants them large.
        self.batch_size = batch_size or (256 if self.device.type == "cuda" else 16)
        self.windows_scored = 0

    @property
    def cfg(self):
        return self.model.cfg

    @torch.inference_mode()
    def logmel(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Samples with their context (`StreamState.frontend_chunk`) → (frames, n_mels) raw log-mel each."""
        out: list[np.ndarray | None] = [None] * len(chunks)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(chunks):
            by_length[len(c)].append(i)
        for idx in by_length.values():
            for j in range(0, len(idx), self.batch_size):
                part = idx[j:j + self.batch_size]
                x = torch.from_numpy(np.stack([chunks[i] for i in part])).to(self.device)
                mel = self.model.frontend.frames(x)[:, 0].float().cpu().numpy()
                for i, m in zip(part, mel):
                    out[i] = m
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def score(self, windows: list[np.ndarray], origins: list[tuple[object, int]] | None = None
              ) -> list[np.ndarray]:
        """(frames, n_mels) log-mel windows → framewise probabilities (n_out, K) each (`origins`: unused here;
        on CUDA the whole window batch is cheap, and training evaluates through the full network)."""
        out: list[np.ndarray] = []
        for i in range(0, len(windows), self.batch_size):
            batch = torch.from_numpy(np.stack(windows[i:i + self.batch_size])[:, None]).to(self.device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            out.extend(self.model.forward_logmel(batch)["framewise"].float().cpu().numpy())
        self.windows_scored += len(windows)
        return out
