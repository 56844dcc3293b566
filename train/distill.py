"""`train --teacher STEM`: the student also learns a model of ours' scores (distillation; never another
detector's output).

Each training step the teacher, frozen and in eval mode, scores the same augmented log-mel the student sees
before SpecAugment (the student's masks are its own: a noisy student), and the loss becomes

    L = (1 − distill) · L_labels + distill · [ BCE(clipwise, teacher's clipwise)
                                               + frame_weight · BCE(framewise_logit, teacher's framewise) ]

over the species both models know. What the teacher adds that the labels lack: a score for every species in every
window — the background species the labels mask, the species absent from a composed window but heard in its real
bed — and framewise targets on whole recordings, where the labels say nothing of when a bird calls. Hinton et
al.'s soft targets, in the binary cross-entropy form that sigmoid outputs take; no temperature (the scores are
probabilities the detector thresholds, and BCE keeps them calibrated, as `loop.sed_loss` says).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from birdlive.errors import BirdliveError
from birdlive.model import BirdSED, ModelConfig, load_checkpoint
from birdlive.model.fuse import inference_copy
from birdlive.model.sed import on_frames

# What makes two networks' log-mels the same tensor: the teacher must read the student's input as it was trained.
LOGMEL_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "logmel_floor_db")


def check_teacher_logmel(path: str, teacher: ModelConfig, student: ModelConfig) -> None:
    differ = [k for k in LOGMEL_FIELDS if getattr(teacher, k) != getattr(student, k)]
    if differ:
        raise BirdliveError(f"--teacher {path}: its log-mel differs from the student's in {', '.join(differ)}")


class Teacher:
    """A checkpoint of ours, frozen, and the columns of the species it shares with the student."""

    def __init__(self, path: str, student: ModelConfig, device):
        net = load_checkpoint(path, device)
        check_teacher_logmel(path, net.cfg, student)
        where = {lab: i for i, lab in enumerate(net.cfg.labels)}
        shared = [(s, where[lab]) for s, lab in enumerate(student.labels) if lab in where]
        if not shared:
            raise BirdliveError(f"--teacher {path}: it knows none of the student's species")
        # BatchNorm folded and channels-last, as the detector scores: the teacher's forward pass costs half
        # (0.31 → 0.15 s for 16 windows of the default, one thread), its scores move by under 1e-5
        self.net: BirdSED = inference_copy(net).requires_grad_(False)
        self.student_cols = torch.tensor([s for s, _ in shared], device=device)
        self.teacher_cols = torch.tensor([t for _, t in shared], device=device)

    @torch.no_grad()
    def targets(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's clipwise (B, K) and framewise (B, T, K) scores of the shared species K."""
        out = self.net.forward_logmel(logmel)
        return {"clipwise": out["clipwise"].float()[:, self.teacher_cols],
                "framewise": out["framewise"].float()[:, :, self.teacher_cols]}


def distill_loss(out: dict, teacher: Teacher, targets: dict, frame_weight: float = 0.5) -> torch.Tensor:
    """BCE of the student's shared-species outputs against the teacher's scores, clipwise and framewise."""
    clip = out["clipwise"].float()[:, teacher.student_cols].clamp(1e-7, 1 - 1e-7)
    clip_loss = F.binary_cross_entropy(clip, targets["clipwise"])
    logit = out["framewise_logit"].float()[:, :, teacher.student_cols]
    frames = targets["framewise"]
    if logit.shape[1] != frames.shape[1]:     # the two networks' output grids differ by a rounding: align
        frames = on_frames(frames, logit.shape[1])
    frame_loss = F.binary_cross_entropy_with_logits(logit, frames)
    return clip_loss + frame_weight * frame_loss
