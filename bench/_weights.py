"""Full-size random VALL-E X weights built from the key schema (for the benchmark)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

# ../shared/golden beside the checkout, or VALLEX_GOLDEN (as in tests/conftest.py)
GOLDEN = Path(os.environ.get("VALLEX_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))
SCHEMA = GOLDEN / "schema" / "vallex-full.json"


def random_state_dict(schema_path: str | Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Reference-like init (nn.Embedding N(0,1), nn.Linear U(+-1/sqrt(fan_in)), LayerNorm 1/0, alpha 1),
    tied NAR heads sharing storage with their embedding tables, and the AR head's EOS row set to
    -1 (as ref_bench.py does) so greedy decoding runs to the 16 x text-ids cap."""
    keys = json.loads(Path(schema_path).read_text())["keys"]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, spec in keys.items():
        shape = tuple(spec["shape"])
        m = name.split(".")
        if name.startswith("nar_predict_layers.") and int(m[1]) <= 5:
            continue  # tied, filled below
        if name.endswith(".alpha"):
            t = torch.ones(shape)
        elif "word_embeddings" in name:
            t = torch.empty(shape).normal_(generator=g)
        elif len(shape) == 1:
            is_norm_w = (".norm" in name and name.endswith(".weight"))
            t = torch.ones(shape) if is_norm_w else torch.zeros(shape)
            if name.endswith("project_layer.bias"):
                t[: shape[0] // 2] = 1.0  # AdaLN gain half
        else:
            bound = 1.0 / math.sqrt(shape[1])
            t = torch.empty(shape).uniform_(-bound, bound, generator=g)
        sd[name] = t
    for j in range(6):
        sd[f"nar_predict_layers.{j}.weight"] = sd[f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"]
    sd = {k: sd[k] for k in keys}  # schema order
    with torch.no_grad():
        sd["ar_predict_layer.weight"][1024].fill_(-1.0)
    return sd


def write_checkpoint(schema_path, out_path, seed: int = 0) -> Path:
    out = Path(out_path)
    if out.exists() and out.stat().st_size > 1_000_000_000:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"model": random_state_dict(schema_path, seed)}, tmp)
    tmp.replace(out)
    return out
