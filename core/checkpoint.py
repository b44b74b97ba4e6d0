"""Reading the reference VALL-E X checkpoint: safe loading, the key schema, strict checks, tying.

The reference file is `torch.save({"model": state_dict})` with 374 float32 keys (the schema is
`reference_schema(1024, 12)`). It is read with `weights_only=True` (mmapped when possible) or from
.safetensors; nothing is ever unpickled. Every key, shape and dtype is checked and the error names
the keys and the file. Internal module names differ from the checkpoint's: `checkpoint_to_internal`
is the one place that maps them (core/transformer.py builds the modules).
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import torch

from core.errors import CheckpointError

log = logging.getLogger(__name__)

N_CODES = 1024  # codes per codebook

def reference_schema(d_model: int, n_ar_layers: int, n_nar_layers: int | None = None, d_ff: int | None = None,
                     n_text: int = 2048, n_quantizers: int = 8, n_langs: int = 3) -> dict[str, tuple]:
    """Key -> shape of the reference VALLE state dict (models/vallex.py, prefix_mode 1, tied)."""
    d = d_model
    f = d_ff or 4 * d
    n_nar_layers = n_ar_layers if n_nar_layers is None else n_nar_layers
    s: dict[str, tuple] = {
        "ar_text_embedding.word_embeddings.weight": (n_text, d),
        "nar_text_embedding.word_embeddings.weight": (n_text, d),
        "ar_audio_embedding.word_embeddings.weight": (N_CODES + 2, d),
        "ar_text_position.alpha": (1,),
        "ar_audio_position.alpha": (1,),
    }

    def norm(p, ada):
        if ada:
            s[f"{p}.project_layer.weight"] = (2 * d, d)
            s[f"{p}.project_layer.bias"] = (2 * d,)
            p = f"{p}.norm"
        s[f"{p}.weight"] = (d,)
        s[f"{p}.bias"] = (d,)

    def layer(p, ada):
        s[f"{p}.self_attn.in_proj_weight"] = (3 * d, d)
        s[f"{p}.self_attn.in_proj_bias"] = (3 * d,)
        s[f"{p}.self_attn.out_proj.weight"] = (d, d)
        s[f"{p}.self_attn.out_proj.bias"] = (d,)
        s[f"{p}.linear1.weight"] = (f, d)
        s[f"{p}.linear1.bias"] = (f,)
        s[f"{p}.linear2.weight"] = (d, f)
        s[f"{p}.linear2.bias"] = (d,)
        norm(f"{p}.norm1", ada)
        norm(f"{p}.norm2", ada)

    for i in range(n_ar_layers):
        layer(f"ar_decoder.layers.{i}", False)
    norm("ar_decoder.norm", False)
    s["ar_predict_layer.weight"] = (N_CODES + 1, d)
    s["nar_audio_embeddings.0.word_embeddings.weight"] = (N_CODES + 1, d)
    for q in range(1, n_quantizers):
        s[f"nar_audio_embeddings.{q}.word_embeddings.weight"] = (N_CODES, d)
    s["nar_text_position.alpha"] = (1,)
    s["nar_audio_position.alpha"] = (1,)
    for i in range(n_nar_layers):
        layer(f"nar_decoder.layers.{i}", True)
    norm("nar_decoder.norm", True)
    for j in range(n_quantizers - 1):
        s[f"nar_predict_layers.{j}.weight"] = (N_CODES, d)
    for j in range(n_quantizers - 1):
        s[f"nar_stage_embeddings.{j}.word_embeddings.weight"] = (1, d)
    s["ar_language_embedding.word_embeddings.weight"] = (n_langs, d)
    s["nar_language_embedding.word_embeddings.weight"] = (n_langs, d)
    return s


_RENAMES = [
    (r"^(ar|nar)_text_embedding\.word_embeddings\.weight$", r"\1_text_emb.weight"),
    (r"^ar_audio_embedding\.word_embeddings\.weight$", r"ar_audio_emb.weight"),
    (r"^(ar|nar)_language_embedding\.word_embeddings\.weight$", r"\1_lang_emb.weight"),
    (r"^(ar|nar)_(text|audio)_position\.alpha$", r"\1_\2_alpha"),
    (r"^(ar|nar)_decoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$", r"\1.layers.\2.qkv.\3"),
    (r"^(ar|nar)_decoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)$", r"\1.layers.\2.out.\3"),
    (r"^(ar|nar)_decoder\.layers\.(\d+)\.linear1\.(weight|bias)$", r"\1.layers.\2.ff1.\3"),
    (r"^(ar|nar)_decoder\.layers\.(\d+)\.linear2\.(weight|bias)$", r"\1.layers.\2.ff2.\3"),
    (r"^nar_decoder\.(layers\.\d+\.norm[12]|norm)\.project_layer\.(weight|bias)$", r"nar.\1.project.\2"),
    (r"^nar_decoder\.(layers\.\d+\.norm[12]|norm)\.norm\.(weight|bias)$", r"nar.\1.norm.\2"),
    (r"^ar_decoder\.(layers\.\d+\.norm[12]|norm)\.(weight|bias)$", r"ar.\1.\2"),
    (r"^ar_predict_layer\.weight$", r"ar_head.weight"),
    (r"^nar_audio_embeddings\.(\d+)\.word_embeddings\.weight$", r"nar_audio_embs.\1.weight"),
    (r"^nar_predict_layers\.(\d+)\.weight$", r"nar_heads.\1.weight"),
    (r"^nar_stage_embeddings\.(\d+)\.word_embeddings\.weight$", r"nar_stage_embs.\1.weight"),
]
_RENAMES_C = [(re.compile(a), b) for a, b in _RENAMES]


def checkpoint_to_internal(name: str) -> str:
    for pat, rep in _RENAMES_C:
        if pat.match(name):
            return pat.sub(rep, name)
    raise KeyError(name)


def _list(keys, n=8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def why_unloadable(path: Path, e: Exception, approx_bytes: int | None = None) -> str:
    """Why torch.load refused `path`, in the user's terms: what the file really is where that can
    be told from its first bytes (a download gone wrong saves a Git LFS pointer or an HTML page),
    truncated, or holding objects. Not torch's own advice, which suggests weights_only=False: that
    is the unsafe load of a file that may run code."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    text = head.lstrip().lower()
    if size == 0:
        return "the file is empty (0 bytes)"
    if text.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer (a small text file), not the weights: the repository was cloned without LFS"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "it is a web page (HTML), not the weights: the download saved an error or login page"
    if "global" in str(e).lower():  # torch's "unsupported GLOBAL module.name": an object, not a tensor
        return "it holds Python objects, not only weights (a pickle that could run code), so it was refused"
    if approx_bytes and size < approx_bytes // 2:
        return f"it is {size:,} bytes where the weights are about {approx_bytes:,}: the file is truncated"
    return f"its contents are not a PyTorch checkpoint's ({type(e).__name__})"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a reference checkpoint safely: weights-only torch.load (mmap when possible) for .pt,
    safetensors for .safetensors. Returns (state dict, mmapped). Never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found", hint="Check the models folder.")
    hint = "Use the VALL-E X checkpoint (vallex-checkpoint.pt) or a .safetensors export of it."
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{" and not head.startswith(b"PK")):
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu")), False
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: "
                                  f"{str(e)[:200]})", hint=hint) from None
    mmapped = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmapped)
    except Exception as e:  # UnpicklingError (refused object), RuntimeError (not a torch file), ...
        from core.store import REGISTRY

        why = why_unloadable(path, e, REGISTRY["vallex"].approx_bytes)
        raise CheckpointError(f"{path} is not a usable PyTorch checkpoint: {why}.", hint=hint) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a VALL-E X checkpoint (expected {{'model': state_dict}}, "
                              f"found {type(obj).__name__})", hint=hint)
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a VALL-E X state dict (entries that are not named tensors: "
                              f"{_list(bad)})", hint=hint)
    return obj, mmapped


def _count(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def infer_config(sd: dict[str, torch.Tensor], source: str) -> dict[str, int]:
    key = "ar_text_embedding.word_embeddings.weight"
    if key not in sd or sd[key].dim() != 2:
        raise CheckpointError(f"{source}: not a VALL-E X checkpoint (missing key {key}); found "
                              f"{len(sd)} keys such as {_list(list(sd)[:5], 5)}")
    n_text, d = (int(x) for x in sd[key].shape)
    n_ar = _count(sd, "ar_decoder.layers.")
    n_nar = _count(sd, "nar_decoder.layers.")
    lin1 = sd.get("ar_decoder.layers.0.linear1.weight")
    d_ff = int(lin1.shape[0]) if lin1 is not None and lin1.dim() == 2 else 4 * d
    n_q = _count(sd, "nar_audio_embeddings.") or 8
    if n_ar == 0 or n_nar == 0:
        raise CheckpointError(f"{source}: no decoder layers found (keys ar_decoder.layers.* / "
                              f"nar_decoder.layers.* missing)")
    return {"d_model": d, "n_ar": n_ar, "n_nar": n_nar, "d_ff": d_ff, "n_text": n_text, "n_q": n_q}


def check_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, int], source: str) -> None:
    """Strict: every key present, none extra, every shape right. The error names keys and file."""
    want = reference_schema(cfg["d_model"], cfg["n_ar"], cfg["n_nar"], cfg["d_ff"], cfg["n_text"], cfg["n_q"])
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shapes = [f"{k} {list(sd[k].shape)} (expected {list(want[k])})" for k in want
              if k in sd and tuple(sd[k].shape) != want[k]]
    dtypes = [f"{k} ({sd[k].dtype})" for k in want if k in sd and not sd[k].is_floating_point()]
    if missing or extra or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if extra:
            parts.append(f"unexpected keys: {_list(extra)}")
        if shapes:
            parts.append(f"wrong shapes: {_list(shapes, 5)}")
        if dtypes:
            parts.append(f"not floating point: {_list(dtypes, 5)}")
        raise CheckpointError(f"{source}: checkpoint does not match the VALL-E X layout "
                              f"(d_model {cfg['d_model']}, {cfg['n_ar']} layers): " + "; ".join(parts),
                              hint="The file is damaged or is not the VALL-E X checkpoint; download it again.")


def _fill_tied_aliases(sd: dict) -> None:
    """safetensors cannot store shared tensors: exports keep one name of each tied pair."""
    for j in range(6):
        a = f"nar_predict_layers.{j}.weight"
        b = f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"
        if a in sd and b not in sd:
            sd[b] = sd[a]
        elif b in sd and a not in sd:
            sd[a] = sd[b]


def _reference_tying(sd: dict) -> None:
    """The reference ties nar_predict_layers[j] to nar_audio_embeddings[j+2] (j = 0..5); when a file
    holds two different tensors, loading it into the reference leaves the predict-layer values in
    both (it is loaded last). Do the same."""
    n_q = _count(sd, "nar_audio_embeddings.")
    for j in range(max(0, n_q - 2)):
        a = f"nar_predict_layers.{j}.weight"
        b = f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"
        if a in sd and b in sd and sd[a] is not sd[b]:
            same_mem = sd[a].device.type != "meta" and sd[a].data_ptr() == sd[b].data_ptr()
            if same_mem or sd[a].device.type == "meta" or torch.equal(sd[a], sd[b]):
                sd[b] = sd[a]
            else:
                log.warning("%s and %s differ; using %s for both, as the reference does", a, b, a)
                sd[b] = sd[a]


def head_count(checkpoint: Path) -> int:
    """Attention heads are not stored in the reference checkpoint (the public one has 16). A
    `config.json` beside it with {"nhead": N}, as the golden configs write it, overrides that."""
    cfg = Path(checkpoint).with_name("config.json")
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
            return int(data.get("nhead", data.get("n_heads", 16)))
        except (ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{cfg} is not a valid model config ({err}).",
                                  'Fix it ({"nhead": 16}) or delete it.') from None
    return 16
