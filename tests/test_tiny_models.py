"""The tiny model folder loads through the same code paths as the real weights."""
from __future__ import annotations

import json
import re

import numpy as np
import soundfile as sf
import torch

from tests.tiny_models import make_vallex_checkpoint


def _reduced_schema(golden, n_layers: int) -> list[str]:
    full = json.loads((golden / "schema" / "vallex-full.json").read_text())["keys"]
    return [k for k in full if not (m := re.search(r"_decoder\.layers\.(\d+)\.", k)) or int(m.group(1)) < n_layers]


def test_checkpoint_layout_matches_the_reference(tiny_models, golden):
    ck = torch.load(tiny_models / "vallex" / "vallex-checkpoint.pt", weights_only=True)
    assert list(ck) == ["model"]
    sd = ck["model"]
    assert list(sd) == _reduced_schema(golden, 2)  # same names, same order as the real file
    ref = torch.load(golden / "model" / "tiny-a" / "checkpoint.pt", weights_only=True)["model"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    for j in range(6):  # the reference's tied NAR heads share storage
        assert sd[f"nar_predict_layers.{j}.weight"].data_ptr() == \
            sd[f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"].data_ptr()
    assert sd["nar_predict_layers.6.weight"].data_ptr() != sd["nar_audio_embeddings.7.word_embeddings.weight"].data_ptr()
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_other_sizes_and_determinism(tmp_path, golden):
    a = make_vallex_checkpoint(tmp_path / "a.pt", d_model=24, n_heads=6, n_layers=3, seed=5)
    b = make_vallex_checkpoint(tmp_path / "b.pt", d_model=24, n_heads=6, n_layers=3, seed=5)
    sa = torch.load(a, weights_only=True)["model"]
    sb = torch.load(b, weights_only=True)["model"]
    assert list(sa) == _reduced_schema(golden, 3)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["ar_decoder.layers.0.linear1.weight"].shape == (96, 24)


def test_vallex_loads_and_stops_by_eos(tiny_models):
    from core.lm import VallEX
    from core.sampling import Sampling

    model = VallEX.from_checkpoint(tiny_models / "vallex" / "vallex-checkpoint.pt", n_heads=4)
    g = torch.Generator().manual_seed(0)
    stops, lengths = [], []
    for _ in range(6):
        L = int(torch.randint(5, 20, (1,), generator=g))
        text = torch.randint(0, 70, (L,), generator=g).tolist()
        prompt = torch.randint(0, 1024, (30, 8), generator=g)
        out = model.generate(text, [0] * L, 0, prompt, sampling=Sampling(top_k=1))
        assert out.codes.dtype == torch.int64 and out.codes.shape[1] == 8
        assert out.codes.numel() == 0 or int(out.codes.max()) < 1024
        stops.append(out.stop_reason)
        lengths.append(out.codes.shape[0])
    assert "eos" in stops  # the EOS row bias makes some inputs stop early
    assert all(n <= 16 * 20 for n in lengths)


def test_codec_and_vocos_load(tiny_models, golden):
    from core.codec import Codec, Vocos

    codec = Codec.from_pretrained(tiny_models / "encodec")
    wav, sr = sf.read(golden / "prompts" / "en-1.wav", dtype="float32")
    codes = codec.encode(wav[: sr * 2], sr)
    assert codes.shape == (150, 8) and codes.dtype == torch.int64
    assert all(len(set(codes[:, q].tolist())) > 5 for q in range(8))  # varied codes, not one per codebook
    audio = Vocos.from_pretrained(tiny_models / "vocos").decode(codes)
    assert audio.shape == (150 * 320,) and torch.isfinite(audio).all()
    assert 0.005 < float(audio.std()) and float(audio.abs().max()) < 1.0


def test_asr_folder_loads_in_faster_whisper(tiny_models):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(tiny_models / "asr"), device="cpu", compute_type="float32")
    assert model.model.is_multilingual
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    lang, prob, probs = model.detect_language(audio)
    assert {"en", "zh", "ja"} <= {code for code, _ in probs}
    segments, info = model.transcribe(audio, language="en", beam_size=1, temperature=0.0)
    assert isinstance("".join(s.text for s in segments), str)
