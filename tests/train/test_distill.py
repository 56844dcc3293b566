"""`train --teacher`: the student learns a model of ours' scores on the species both know; a teacher that cannot
read the student's log-mel is refused before any audio is decoded, one that knows none of its species when the
network is built."""
from __future__ import annotations

import json

import pytest
import torch

from birdlive.errors import BirdliveError
from birdlive.model import BirdSED, create_config, load_checkpoint, save_checkpoint
from birdlive.train import TrainConfig, train
from birdlive.train.datasets import load_dataset
from birdlive.train.distill import Teacher, distill_loss

from .test_train_loop import small_run, terminate_during_step, weights


def tiny(labels, seed=0, **overrides) -> BirdSED:
    torch.manual_seed(seed)
    return BirdSED(create_config("tiny", labels, window_s=1.0, **overrides)).eval()


def test_the_teacher_answers_for_the_species_both_know_in_the_students_order(tmp_path):
    save_checkpoint(tiny(["a", "b", "c"]), tmp_path / "t")
    teacher = Teacher(str(tmp_path / "t"), tiny(["c", "x", "a"]).cfg, torch.device("cpu"))
    assert teacher.student_cols.tolist() == [0, 2] and teacher.teacher_cols.tolist() == [2, 0]
    logmel = torch.randn(2, 1, 101, 64)
    got = teacher.targets(logmel)
    ref = teacher.net.forward_logmel(logmel)
    assert got["clipwise"].shape == (2, 2) and torch.equal(got["clipwise"][:, 0], ref["clipwise"][:, 2])
    assert torch.equal(got["framewise"][:, :, 1], ref["framewise"][:, :, 0])


def test_a_teacher_that_reads_another_log_mel_or_knows_no_species_is_refused(tmp_path):
    save_checkpoint(tiny(["a", "b"], n_mels=96), tmp_path / "mels")
    with pytest.raises(BirdliveError, match="n_mels"):
        Teacher(str(tmp_path / "mels"), tiny(["a", "b"]).cfg, torch.device("cpu"))
    save_checkpoint(tiny(["y", "z"]), tmp_path / "strangers")
    with pytest.raises(BirdliveError, match="none of the student's species"):
        Teacher(str(tmp_path / "strangers"), tiny(["a", "b"]).cfg, torch.device("cpu"))


def test_a_student_that_already_scores_as_its_teacher_gets_no_gradient(tmp_path):
    """BCE against soft targets is smallest where the student's scores equal them: the pull is toward the
    teacher's scores, not toward 0 or 1."""
    save_checkpoint(tiny(["a", "b"]), tmp_path / "t")
    logmel = torch.randn(3, 1, 101, 64)

    def grad_norm(student: BirdSED) -> float:
        teacher = Teacher(str(tmp_path / "t"), student.cfg, torch.device("cpu"))
        student.zero_grad()
        distill_loss(student.forward_logmel(logmel), teacher, teacher.targets(logmel)).backward()
        return float(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]).norm())
    same = load_checkpoint(tmp_path / "t")
    assert grad_norm(same) < 1e-5 and grad_norm(tiny(["a", "b"], seed=1)) > 1e-2


@pytest.mark.training
def test_training_with_a_teacher_moves_the_student_toward_its_scores(tmp_path):
    """A teacher sure of one species everywhere: the taught student scores that species far above the student
    trained on the labels alone (where it is present in a third of the windows), from the same start."""
    common = small_run(tmp_path, max_steps=12, lr=3e-2, epoch_size=96)
    labels = sorted(load_dataset(common["data"][0]).labels)
    teacher = tiny(labels)
    with torch.no_grad():
        teacher.head.cla.weight.zero_()
        teacher.head.cla.bias.fill_(-6.0)
        teacher.head.cla.bias[0] = 6.0           # the first species at 0.998 in every frame, the others at 0.002
    save_checkpoint(teacher, tmp_path / "teacher")
    taught, alone = tmp_path / "taught", tmp_path / "alone"
    train(TrainConfig(run_dir=str(taught), teacher=str(tmp_path / "teacher"), distill=1.0, **common),
          show_progress=False)
    train(TrainConfig(run_dir=str(alone), **common), show_progress=False)
    saved = json.loads((taught / "train.json").read_text())
    assert saved["teacher"] == str(tmp_path / "teacher") and saved["distill"] == 1.0
    assert json.loads((taught / "last.json").read_text())["extra"]["training"]["teacher"] == str(tmp_path / "teacher")
    wave = torch.randn(4, 32000) * 0.05
    with torch.no_grad():
        first = {name: float(load_checkpoint(run / "last")(wave)["clipwise"][:, 0].mean()) for name, run in
                 (("taught", taught), ("alone", alone))}
    assert first["taught"] > first["alone"] + 0.2, first


@pytest.mark.training
def test_a_stopped_teacher_run_resumes_with_its_teacher_bit_for_bit(tmp_path, monkeypatch):
    """`--resume` with no other option reads the teacher and its weight from the run's train.json: stopping
    after step 3 and resuming trains the same weights as one uninterrupted run (without the teacher they differ)."""
    from birdlive.train.loop import Stepper
    common = small_run(tmp_path, max_steps=6, checkpoint_minutes=60.0)
    save_checkpoint(tiny(sorted(load_dataset(common["data"][0]).labels)), tmp_path / "teacher")
    taught = dict(teacher=str(tmp_path / "teacher"), distill=0.5, **common)
    train(TrainConfig(run_dir=str(tmp_path / "whole"), **taught), show_progress=False)
    original = terminate_during_step(monkeypatch, 3)
    assert train(TrainConfig(run_dir=str(tmp_path / "cut"), **taught), show_progress=False)["steps"] == 3
    monkeypatch.setattr(Stepper, "__call__", original)
    assert train(TrainConfig(run_dir=str(tmp_path / "cut")), resume=True, show_progress=False)["steps"] == 6
    train(TrainConfig(run_dir=str(tmp_path / "alone"), **common), show_progress=False)
    whole, cut, alone = (weights(tmp_path / r) for r in ("whole", "cut", "alone"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert not all(torch.equal(whole[k], alone[k]) for k in whole)


def test_training_refuses_a_teacher_of_another_log_mel_before_reading_the_data(tmp_path):
    common = small_run(tmp_path, max_steps=1)
    save_checkpoint(tiny(["a"], n_mels=96), tmp_path / "mels")
    with pytest.raises(BirdliveError, match="n_mels"):
        train(TrainConfig(run_dir=str(tmp_path / "run"), teacher=str(tmp_path / "mels"), **common),
              show_progress=False)
    assert not (tmp_path / "run" / "split.json").exists() and not (tmp_path / "cache").exists()
