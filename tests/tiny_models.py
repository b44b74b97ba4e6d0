"""Tiny random models in the real on-disk formats, for tests (no real weights, no network).

`make_models_folder(dest)` writes the layout `core.store` resolves for real weights:

    dest/vallex/vallex-checkpoint.pt        {"model": state_dict}, reference key names
    dest/vocos/config.yaml + pytorch_model.bin   charactr/vocos-encodec-24khz layout
    dest/encodec/config.json + model.safetensors transformers EncodecModel (facebook/encodec_24khz)
    dest/asr/                                faster-whisper (CTranslate2) folder (tests/tiny_asr.py)

Everything is drawn from fixed seeds, so two calls give identical files. Sizes are reduced (width,
depth, FFN) but every vocabulary / codebook size is the real one, so code that checks those
against the real model's constants runs unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# Real vocabulary sizes of VALL-E X (models/vallex.py with the released checkpoint).
N_QUANTIZERS = 8
EOS = 1024


@dataclass(frozen=True)
class TinyVallexConfig:
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    seed: int = 1234
    # Mean EOS logit, in units of the typical spread of the other AR logits. Measured on 12 random
    # inputs (L 5-30, prompt 0-100 frames): 1.75 -> greedy stops by EOS on 11/12 after 3-111
    # frames, sampling on about half (the rest hit the 16*L cap); 1.0 -> greedy never stops;
    # 3.0 -> greedy stops after 0-3 frames on most inputs.
    eos_bias: float = 1.75

    @property
    def ffn(self) -> int:
        return 4 * self.d_model


# ----------------------------------------------------------------------------- VALL-E X


def _vallex_shapes(cfg: TinyVallexConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape in the reference state-dict order: the engine's schema (itself checked
    against ../shared/golden/schema/vallex-full.json by tests/test_schema.py) at reduced size."""
    from core.checkpoint import reference_schema

    return {k: tuple(v) for k, v in reference_schema(cfg.d_model, cfg.n_layers, d_ff=cfg.ffn).items()}


def _init_tensor(key: str, shape: tuple[int, ...], d: int, g: torch.Generator) -> torch.Tensor:
    """Reference-like init, perturbed away from it so every parameter matters."""
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if key.endswith(".alpha"):
        return 0.6 + 0.9 * torch.rand(shape, generator=g)
    if "word_embeddings" in key:
        return randn(*shape)  # nn.Embedding default N(0, 1)
    if key.endswith("project_layer.bias"):
        bias = 0.2 * randn(*shape)
        bias[:d] += 1.0  # gain half of the AdaLN projection
        return bias
    if ".norm" in key and key.endswith(".weight") and len(shape) == 1:
        return 1.0 + 0.3 * randn(*shape)  # LayerNorm gain
    if len(shape) == 1:
        return 0.1 * randn(*shape)  # every other bias
    fan_in = shape[1]
    w = (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)  # nn.Linear default scale
    if key.endswith("in_proj_weight"):
        w = w * 2.0  # sharper attention than the xavier init
    return w


def _vallex_state_dict(cfg: TinyVallexConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in _vallex_shapes(cfg).items():
        tied = key.startswith("nar_predict_layers.") and int(key.split(".")[1]) < N_QUANTIZERS - 2
        if tied:
            # nar_predict_layers.j shares storage with nar_audio_embeddings.{j+2} (reference tying).
            j = int(key.split(".")[1])
            sd[key] = sd[f"nar_audio_embeddings.{j + 2}.word_embeddings.weight"]
        else:
            sd[key] = _init_tensor(key, shape, cfg.d_model, g)
    _bias_eos(sd, cfg, g)
    return sd


def _bias_eos(sd: dict[str, torch.Tensor], cfg: TinyVallexConfig, g: torch.Generator) -> None:
    """Make EOS reachable: point the EOS row at the final LayerNorm bias direction.

    After the final norm, h = gain * n + b with |n|^2 ~ d. Adding beta * b / |b|^2 to the EOS row
    adds about beta (+- the b.(gain*n) spread) to its logit, while the other logits spread with
    std ~ |w_row| * |h|. beta = eos_bias * that spread.
    """
    d = cfg.d_model
    b = sd["ar_decoder.norm.bias"] = 0.5 * torch.randn(d, generator=g)
    w = sd["ar_predict_layer.weight"]
    h_norm = math.sqrt(d * (1.0 + 0.09) + float(b.pow(2).sum()))
    spread = float(w[:EOS].norm(dim=1).mean()) * h_norm / math.sqrt(d)
    w[EOS] = w[EOS] + cfg.eos_bias * spread * b / b.pow(2).sum()


def make_vallex_checkpoint(
    path: Path,
    d_model: int = 32,
    n_heads: int = 4,
    n_layers: int = 2,
    seed: int = 1234,
    eos_bias: float = 1.75,
) -> Path:
    """Write a tiny random VALL-E X checkpoint `{"model": state_dict}` (reference layout, fp32).

    Loads with `torch.load(path, weights_only=True)` and the engine's strict loader; n_heads is not
    stored in the file (as in the reference) and must be passed to the loader.
    """
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
    cfg = TinyVallexConfig(d_model, n_heads, n_layers, seed, eos_bias)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _vallex_state_dict(cfg)}, path)
    return path


# ----------------------------------------------------------------------------- Vocos

_VOCOS_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.EncodecFeatures
  init_args:
    encodec_model: encodec_24khz
    bandwidths: [1.5, 3.0, 6.0, 12.0]
    train_codebooks: false

backbone:
  class_path: vocos.models.VocosBackbone
  init_args:
    input_channels: 128
    dim: {dim}
    intermediate_dim: {inter}
    num_layers: {layers}
    adanorm_num_embeddings: 4  # len(bandwidths)

head:
  class_path: vocos.heads.ISTFTHead
  init_args:
    dim: {dim}
    n_fft: 1280
    hop_length: 320
    padding: same
"""


def make_vocos_folder(folder: Path, dim: int = 32, inter: int = 64, layers: int = 1, seed: int = 7) -> Path:
    """Write `config.yaml` + `pytorch_model.bin` (plain state dict) like charactr/vocos-encodec-24khz."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    n_fft, c_in = 1280, 128
    sd: dict[str, torch.Tensor] = {
        # 16 EnCodec codebooks x 1024 rows, as the real file (only the first 8 are used at 6 kbps).
        "feature_extractor.codebook_weights": randn(16 * 1024, c_in) * 0.3,
        "backbone.embed.weight": randn(dim, c_in, 7) / math.sqrt(c_in * 7),
        "backbone.embed.bias": 0.05 * randn(dim),
        "backbone.norm.scale.weight": 1.0 + 0.2 * randn(4, dim),
        "backbone.norm.shift.weight": 0.1 * randn(4, dim),
    }
    for i in range(layers):
        p = f"backbone.convnext.{i}."
        sd[p + "gamma"] = 0.3 * randn(dim)
        sd[p + "dwconv.weight"] = randn(dim, 1, 7) / math.sqrt(7)
        sd[p + "dwconv.bias"] = 0.05 * randn(dim)
        sd[p + "norm.scale.weight"] = 1.0 + 0.2 * randn(4, dim)
        sd[p + "norm.shift.weight"] = 0.1 * randn(4, dim)
        sd[p + "pwconv1.weight"] = randn(inter, dim) / math.sqrt(dim)
        sd[p + "pwconv1.bias"] = 0.05 * randn(inter)
        sd[p + "pwconv2.weight"] = randn(dim, inter) / math.sqrt(inter)
        sd[p + "pwconv2.bias"] = 0.05 * randn(dim)
    sd["backbone.final_layer_norm.weight"] = 1.0 + 0.1 * randn(dim)
    sd["backbone.final_layer_norm.bias"] = 0.05 * randn(dim)
    n_bins = n_fft // 2 + 1
    sd["head.out.weight"] = 0.3 * randn(2 * n_bins, dim) / math.sqrt(dim)
    # Log-magnitude bias near 1 keeps the waveform at a speech-like level (RMS ~0.05, peak < 0.5).
    sd["head.out.bias"] = torch.cat([1.0 + 0.2 * randn(n_bins), randn(n_bins)])
    sd["head.istft.window"] = torch.hann_window(n_fft)  # periodic, a persistent buffer
    (folder / "config.yaml").write_text(_VOCOS_YAML.format(dim=dim, inter=inter, layers=layers))
    torch.save(sd, folder / "pytorch_model.bin")
    return folder


# ----------------------------------------------------------------------------- EnCodec


def make_encodec_folder(folder: Path, num_filters: int = 4, hidden_size: int = 16, seed: int = 11) -> Path:
    """Write a transformers EncodecModel folder (config.json + model.safetensors), 24 kHz layout.

    Weight norm is stored under the legacy `weight_g` / `weight_v` names, as in the converted hub
    checkpoint; transformers maps them on load. Codebooks are drawn from the encoder's own output
    on noise so that encoding real audio gives varied codes (a fresh model's codebooks are zeros).
    """
    from safetensors.torch import load_file, save_file
    from transformers import EncodecConfig, EncodecModel

    folder = Path(folder)
    torch.manual_seed(seed)  # transformers initialises from the global RNG
    config = EncodecConfig(
        num_filters=num_filters,
        hidden_size=hidden_size,
        codebook_dim=hidden_size,
        codebook_size=1024,
        target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0],
        sampling_rate=24000,
        audio_channels=1,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        upsampling_ratios=[8, 5, 4, 2],
        use_causal_conv=True,
        norm_type="weight_norm",
        pad_mode="reflect",
    )
    model = EncodecModel(config).eval()
    _fill_codebooks(model, seed)
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    sd = load_file(weights)
    renamed = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v.contiguous()
        for k, v in sd.items()
    }
    save_file(renamed, weights, metadata={"format": "pt"})
    return folder


def _calibration_audio(g: torch.Generator) -> torch.Tensor:
    """[1, 1, N] mix of white noise, brown noise and tones at speech-like levels (-50..-10 dB)."""
    n = 8000
    t = torch.arange(n) / 24000
    parts = []
    for level in (0.003, 0.01, 0.03, 0.1, 0.3):
        white = torch.randn(n, generator=g)
        brown = torch.cumsum(torch.randn(n, generator=g), 0)
        brown = (brown - brown.mean()) / brown.std()
        tone = torch.sin(2 * math.pi * (150 + 600 * torch.rand(1, generator=g)) * t) * 1.4
        parts += [level * white, level * brown, level * (tone + 0.3 * white)]
    return torch.cat(parts)[None, None]


@torch.no_grad()
def _fill_codebooks(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    audio = _calibration_audio(g)
    # A random SEANet squashes audio to a near-constant embedding (spread ~1e-3 of its mean), which
    # would give one code per codebook. Re-centre and re-scale the last conv so frames spread ~1.
    conv = model.encoder.layers[-1].conv
    frames = model.encoder(audio)[0].T
    conv.bias -= frames.mean(0)
    scale = 1.0 / frames.std(0).clamp_min(1e-8)
    conv.parametrizations.weight.original0.mul_(scale[:, None, None])
    conv.bias.mul_(scale)
    residual = model.encoder(audio)[0].T  # [T, D] encoder frames
    for layer in model.quantizer.layers:
        picks = residual[torch.randint(0, residual.shape[0], (1024,), generator=g)]
        embed = picks + 0.3 * residual.std(0) * torch.randn(picks.shape, generator=g)
        layer.codebook.embed.copy_(embed)
        layer.codebook.embed_avg.copy_(embed)
        layer.codebook.cluster_size.fill_(1.0)
        layer.codebook.inited.fill_(1.0)
        residual = residual - embed[torch.cdist(residual, embed).argmin(dim=1)]


# ----------------------------------------------------------------------------- all of it


def make_models_folder(dest: Path, *, asr: bool = True) -> Path:
    """Write a complete tiny models folder (layout in docs/design.md) into `dest`; return `dest`."""
    dest = Path(dest)
    make_vallex_checkpoint(dest / "vallex" / "vallex-checkpoint.pt")
    make_vocos_folder(dest / "vocos")
    make_encodec_folder(dest / "encodec")
    if asr:
        from tests.tiny_asr import make_asr_folder

        make_asr_folder(dest / "asr")
    (dest / "TINY_RANDOM_MODELS.json").write_text(
        json.dumps({"note": "tiny random weights for tests; output is noise"}, indent=1)
    )
    return dest
