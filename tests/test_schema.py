"""Checkpoint loading: the full-size schema loads strictly, tampered / hostile files are refused."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from core.errors import CheckpointError
from core.lm import VallEX, read_state_dict, reference_schema
from core.sampling import Sampling


@pytest.fixture(scope="module")
def tiny_sd(golden):
    sd, _ = read_state_dict(golden / "model" / "tiny-a" / "checkpoint.pt")
    return {k: v.clone() for k, v in sd.items()}


def _ref_case(golden):
    return json.loads((golden / "model" / "tiny-a" / "cases.json").read_text())[2]


def test_full_schema_loads_strictly_on_meta(golden):
    """All 374 keys of the public checkpoint's schema map onto the engine (shapes checked), sizes
    inferred from the weights, without allocating 1.5 GB (meta tensors)."""
    keys = json.loads((golden / "schema" / "vallex-full.json").read_text())["keys"]
    assert len(keys) == 374
    sd = {k: torch.empty(v["shape"], dtype=torch.float32, device="meta") for k, v in keys.items()}
    for j in range(6):  # tied as in the file
        sd[f"nar_predict_layers.{j}.weight"] = sd[f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"]
    model = VallEX.from_state_dict(sd, n_heads=16, device="meta", source="vallex-full.json")
    assert model.config == {"d_model": 1024, "n_ar": 12, "n_nar": 12, "d_ff": 4096, "n_text": 2048, "n_q": 8,
                            "n_heads": 16}
    want = reference_schema(1024, 12)
    assert {k: tuple(v["shape"]) for k, v in keys.items()} == want
    n_params = sum(p.numel() for p in model.core.parameters())
    # 376,830,980 values counting the 6 tied tables twice (370,539,524 unique), minus the AdaLN
    # projections that are folded into per-stage tables at load time.
    folded = 25 * (2 * 1024 * 1024 + 2 * 1024)
    assert n_params == 376_830_980 - folded
    missing = dict(sd)
    del missing["nar_decoder.layers.11.norm2.project_layer.bias"]
    with pytest.raises(CheckpointError, match=r"nar_decoder\.layers\.11\.norm2\.project_layer\.bias"):
        VallEX.from_state_dict(missing, device="meta", source="vallex-full.json")


def test_tampered_checkpoint_rejected_by_key_name(tmp_path, tiny_sd):
    cases = {
        "missing": lambda sd: sd.pop("ar_decoder.layers.1.linear2.bias"),
        "unexpected": lambda sd: sd.__setitem__("ar_decoder.layers.1.extra", torch.zeros(3)),
        "shape": lambda sd: sd.__setitem__("nar_decoder.layers.0.linear1.weight", torch.zeros(127, 32)),
    }
    names = {"missing": "ar_decoder.layers.1.linear2.bias", "unexpected": "ar_decoder.layers.1.extra",
             "shape": "nar_decoder.layers.0.linear1.weight"}
    for kind, tamper in cases.items():
        sd = dict(tiny_sd)
        tamper(sd)
        path = tmp_path / f"{kind}.pt"
        torch.save({"model": sd}, path)
        with pytest.raises(CheckpointError) as e:
            VallEX.from_checkpoint(path, n_heads=4)
        msg = str(e.value)
        assert names[kind] in msg and str(path) in msg, msg
    with pytest.raises(ValueError, match="not divide"):
        VallEX.from_state_dict(tiny_sd, n_heads=5)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(self.target), "pwned"))


def test_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned.txt"
    zipped = tmp_path / "evil.pt"
    torch.save({"model": {"x": _Evil(str(marker))}}, zipped)  # torch's zip format
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"model": _Evil(str(marker))}))  # a bare pickle
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match="refused"):
            VallEX.from_checkpoint(path)
        assert not marker.exists()


def test_non_checkpoint_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "other.pt"
    torch.save({"model": {"weight": torch.zeros(2)}}, other)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listing)
    for path in (junk, text, other, listing, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointError) as e:
            VallEX.from_checkpoint(path)
        assert str(path) in str(e.value)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="safetensors"):
        VallEX.from_checkpoint(bad_st)


def test_safetensors_and_plain_state_dict_load_identically(tmp_path, tiny_sd, golden):
    from safetensors.torch import save_file

    st = tmp_path / "model.safetensors"
    untied = {k: v.contiguous().clone() for k, v in tiny_sd.items()
              if not (k.startswith("nar_predict_layers.") and int(k.split(".")[1]) <= 5)}
    save_file(untied, str(st))  # an export that keeps one name per tied pair
    plain = tmp_path / "plain.pt"
    torch.save(tiny_sd, plain)  # a bare state dict, without the {"model": ...} wrapper
    c = _ref_case(golden)
    args = (c["text_ids"], c["text_langs"], c["prompt_text_len"], c["prompt_codes"])
    for path in (st, plain):
        model = VallEX.from_checkpoint(path, n_heads=4)
        assert model.generate_ar(*args, sampling=Sampling(top_k=1)).tolist() == c["ar_codes"]
        assert model.generate_nar(*args, torch.tensor(c["ar_codes"])).tolist() == c["nar_codes"]


def test_untied_heads_follow_the_reference(tiny_sd, golden):
    """Two different tensors for a tied pair: the reference ends up using the predict layer's."""
    sd = dict(tiny_sd)
    sd["nar_audio_embeddings.2.word_embeddings.weight"] = torch.randn_like(sd["nar_predict_layers.0.weight"])
    model = VallEX.from_state_dict(sd, n_heads=4)
    assert torch.equal(model.core.nar_audio_embs[2].weight, sd["nar_predict_layers.0.weight"])
