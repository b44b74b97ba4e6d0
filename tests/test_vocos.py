"""core.vocos.Vocos: golden waveforms, batching, chunked long decode, other sizes, safe loading."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from core.errors import CheckpointError, ModelMissingError
from core.vocos import Vocos, VocosConfig


@pytest.fixture(scope="module")
def vocos_dir(golden):
    return golden / "vocos"


@pytest.fixture(scope="module")
def vocos(vocos_dir) -> Vocos:
    return Vocos.from_pretrained(vocos_dir)


@pytest.fixture(scope="module")
def cases(vocos_dir):
    return [(torch.tensor(c["codes"], dtype=torch.long), np.load(vocos_dir / c["audio_file"]))
            for c in json.loads((vocos_dir / "cases.json").read_text())]


def test_reexported_from_codec():
    from core.codec import Vocos as FromCodec

    assert FromCodec is Vocos


def test_golden_waveforms(vocos, cases):
    assert vocos.cfg == VocosConfig(dim=64, intermediate_dim=192, num_layers=2)
    assert vocos.sample_rate == 24000
    for codes, want in cases:
        got = vocos.decode(codes)
        assert got.dtype == torch.float32 and got.shape == (320 * codes.shape[0],)
        assert np.abs(got.numpy() - want).max() <= 1e-5


def test_bandwidth_id_selects_the_adanorm_row(vocos, cases):
    codes, want = cases[1]
    assert np.abs(vocos.decode(codes, bandwidth_id=1).numpy() - want).max() > 1e-2


def test_batch_equals_one_by_one(vocos, cases):
    codes = cases[2][0]  # 75 frames
    batch = torch.stack([codes, codes.flip(0), (codes + 7) % 1024])
    out = vocos.decode(batch)
    assert out.shape == (3, 320 * 75)
    for row, c in zip(out, batch):
        assert torch.allclose(row, vocos.decode(c), atol=1e-5)


def test_chunked_long_decode_matches_one_pass(vocos, cases):
    codes, want = cases[3]  # 300 frames
    got = vocos.decode(codes, chunk_frames=64)
    assert got.shape == want.shape and np.abs(got.numpy() - want).max() <= 1e-5
    assert vocos.decode(codes[:0]).shape == (0,)


def test_other_sizes_from_config_and_ignored_encodec_keys(tmp_path):
    from tests.tiny_models import make_vocos_folder

    folder = make_vocos_folder(tmp_path / "v", dim=48, inter=96, layers=3)
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    sd["feature_extractor.encodec.encoder.model.0.conv.conv.weight"] = torch.zeros(2, 1, 7)
    torch.save(sd, folder / "pytorch_model.bin")
    voc = Vocos.from_pretrained(folder)
    assert (voc.cfg.dim, voc.cfg.intermediate_dim, voc.cfg.num_layers) == (48, 96, 3)
    out = voc.decode(torch.randint(0, 1024, (10, 8)))
    assert out.shape == (3200,) and torch.isfinite(out).all()


def test_mismatch_pickles_and_missing_files_are_refused(vocos_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(vocos_dir, bad)
    (bad / "config.yaml").write_text((vocos_dir / "config.yaml").read_text().replace("dim: 64", "dim: 80"))
    with pytest.raises(CheckpointError, match="do not match"):
        Vocos.from_pretrained(bad)
    pickled = tmp_path / "pickled"
    shutil.copytree(vocos_dir, pickled)
    torch.save({"x": object()}, pickled / "pytorch_model.bin")  # needs full unpickling: refused
    with pytest.raises(CheckpointError):
        Vocos.from_pretrained(pickled)
    with pytest.raises(ModelMissingError):
        Vocos.from_pretrained(tmp_path / "absent")


def test_bad_codes(vocos):
    with pytest.raises(ValueError):
        vocos.decode(torch.full((4, 8), 1024))
    with pytest.raises(ValueError):
        vocos.decode(torch.zeros(8))


def test_repo_id_goes_through_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("VALLEX_MODELS", str(tmp_path))  # an empty models folder, offline (conftest)
    with pytest.raises(ModelMissingError, match="vocos"):
        Vocos.from_pretrained("charactr/vocos-encodec-24khz")
    with pytest.raises(ModelMissingError):
        Vocos.from_pretrained("someone/else")
