"""The log-mel frontend computes torchlibrosa's numbers (faster), on one frame grid for clips and streams."""
import numpy as np
import pytest
import torch
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

from birdlive.model import BirdSED, create_config
from birdlive.model.frontend import LogMelFrontend, mel_filterbank


@pytest.mark.parametrize("preset", ["cpu", "full"])
def test_frontend_equals_torchlibrosa(preset):
    cfg = create_config(preset, labels=["a"])
    reference_mel = LogmelFilterBank(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                     fmax=cfg.fmax, ref=1.0, amin=10 ** (cfg.logmel_floor_db / 10),
                                     top_db=None, freeze_parameters=True)
    np.testing.assert_allclose(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax),
                               reference_mel.melW.numpy(), atol=1e-7)
    spec = Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft, window="hann",
                       center=True, pad_mode="reflect", freeze_parameters=True)
    x = 0.1 * torch.randn(2, 3 * cfg.sample_rate, generator=torch.Generator().manual_seed(0))
    x[1, :cfg.sample_rate] = 0.0          # digital silence: the floor
    with torch.no_grad():
        want = reference_mel(spec(x))
        got = LogMelFrontend(cfg)(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-3


def test_network_on_log_mel_is_the_network_on_audio():
    """`forward` is `forward_logmel` of the frontend's frames: streaming feeds the second, training the first."""
    model = BirdSED(create_config("tiny", labels=["a", "b", "c"])).eval()
    x = 0.1 * torch.randn(2, model.cfg.window_samples, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(x)
        b = model.forward_logmel(model.frontend(x))
    assert a["framewise"].shape == (2, 50, 3)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
