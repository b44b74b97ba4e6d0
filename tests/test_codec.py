"""core.codec.Codec: EnCodec golden codes (the reference prompt path), both weight-norm spellings,
resampling, stereo/peak rules, the decoder, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from core.codec import Codec
from core.errors import AudioError, ModelMissingError


@pytest.fixture(scope="module")
def codec_dir(golden):
    return golden / "codec"


@pytest.fixture(scope="module")
def codec(codec_dir) -> Codec:
    return Codec.from_pretrained(codec_dir / "transformers")


@pytest.fixture(scope="module")
def cases(codec_dir):
    out = []
    for c in json.loads((codec_dir / "cases.json").read_text()):
        wav, sr = sf.read(codec_dir / c["audio_file"], dtype="float32")
        out.append((wav, sr, torch.tensor(c["codes"], dtype=torch.long), c))
    return out


def test_golden_codes_are_identical(codec, cases):
    assert codec.n_codebooks == 8 and codec.sample_rate == 24000 and codec.hop_length == 320
    for wav, sr, want, c in cases:
        got = codec.encode(wav, sr)
        assert got.dtype == torch.long and got.shape == (c["num_frames"], 8)
        assert torch.equal(got, want), c["description"]


def test_stereo_is_the_channel_mean_not_the_left_channel(codec, cases):
    wav, sr, want, c = next(x for x in cases if x[3]["channels"] == 2)
    assert torch.equal(codec.encode(wav, sr), want)
    assert torch.equal(codec.encode(wav.mean(axis=1, dtype=np.float32), sr), want)
    left = codec.encode(wav[:, 0].copy(), sr)
    assert (left == want).float().mean() < 0.5
    with pytest.raises(AudioError, match="channels, samples"):
        codec.encode(wav.T.copy(), sr)  # [C, N] is refused, not silently misread


def test_peak_over_one_is_normalised_first(codec, cases):
    wav, sr, _, _ = cases[0]
    loud = wav * np.float32(3.7)
    expect = torch.from_numpy(loud) / torch.from_numpy(loud).abs().max()
    assert torch.equal(codec.encode(loud, sr), codec.encode(expect.numpy(), sr))
    assert torch.equal(codec.encode(torch.from_numpy(loud), sr), codec.encode(loud, sr))  # tensors too


def test_other_rates_are_resampled_with_soxr(codec, golden):
    x, sr = sf.read(golden / "prompts" / "en-1.wav", dtype="float32")  # 16 kHz
    x = x[16000: 16000 * 2]
    got = codec.encode(x, sr)
    at24 = soxr.resample(x, sr, 24000, quality="HQ")
    assert got.shape == (int(np.ceil(len(at24) / 320)), 8)
    assert torch.equal(got, codec.encode(at24, 24000))


def test_both_weight_norm_spellings_load_the_same_model(codec, codec_dir, cases, tmp_path):
    from safetensors import safe_open
    from transformers import EncodecConfig, EncodecModel

    with safe_open(codec_dir / "transformers" / "model.safetensors", "pt") as f:
        assert any(k.endswith("weight_g") for k in f.keys())  # the golden folder has the legacy names
    fresh = EncodecModel(EncodecConfig.from_pretrained(codec_dir / "transformers"))
    fresh.load_state_dict(EncodecModel.from_pretrained(codec_dir / "transformers").state_dict())
    fresh.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert any("parametrizations.weight.original0" in k for k in f.keys())
    other = Codec.from_pretrained(tmp_path)
    wav, sr, want, _ = cases[0]
    assert torch.equal(other.encode(wav, sr), want)


def test_decode_gives_320_samples_per_frame(codec, cases):
    _, _, codes, _ = cases[0]
    audio = codec.decode(codes)
    assert audio.dtype == torch.float32 and audio.shape == (320 * codes.shape[0],)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0
    assert codec.decode(codes[:0]).shape == (0,)


def test_bad_input_and_missing_models(codec, tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        codec.encode(np.array([0.1, np.nan] * 400, np.float32), 24000)
    with pytest.raises(AudioError, match="empty"):
        codec.encode(np.zeros(0, np.float32), 24000)
    with pytest.raises(AudioError, match="float"):
        codec.encode(np.zeros(1000, np.int16), 24000)
    with pytest.raises(ModelMissingError):
        Codec.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ModelMissingError):
        Codec.from_pretrained(tmp_path)  # a folder without config.json
