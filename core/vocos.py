"""Vocos vocoder for EnCodec codes (`charactr/vocos-encodec-24khz`), in plain PyTorch.

The `vocos` package imports torchaudio, which does not load with our torch, so this module
re-implements its decode path: codes -> summed codebook embeddings -> ConvNeXt backbone with
AdaLayerNorm (bandwidth id) -> ISTFT head with vocos' own "same"-padded overlap-add.
Weights load unchanged from the hub layout (`config.yaml` + `pytorch_model.bin`); the module
names below mirror its state-dict keys so loading is strict and needs no key map.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from core.devices import resolve_device
from core.errors import CheckpointError, ModelMissingError

log = logging.getLogger(__name__)

VOCOS_REPO = "charactr/vocos-encodec-24khz"
ENCODEC_REPO = "facebook/encodec_24khz"
SAMPLE_RATE = 24000  # Hz, output rate of the 24 kHz EnCodec-based Vocos
BANDWIDTH_ID = 2  # index into bandwidths [1.5, 3, 6, 12] kbps: 6 kbps = 8 codebooks
CODEBOOK_SIZE = 1024  # rows per EnCodec codebook in `codebook_weights`
LN_EPS = 1e-6  # vocos uses 1e-6 in every LayerNorm
MAG_CLIP = 100.0  # vocos clips exp(log-magnitude) at 1e2


@dataclass(frozen=True)
class VocosConfig:
    """Sizes read from `config.yaml` (defaults: the real 24 kHz EnCodec model)."""

    input_channels: int = 128  # codebook embedding width
    dim: int = 384  # backbone width
    intermediate_dim: int = 1152  # ConvNeXt MLP width
    num_layers: int = 8
    adanorm_num_embeddings: int = 4  # one AdaLN row per bandwidth
    n_fft: int = 1280
    hop_length: int = 320  # samples per frame at 24 kHz
    padding: str = "same"
    bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0)

    @classmethod
    def from_yaml(cls, path: Path) -> "VocosConfig":
        """Read sizes from a vocos `config.yaml`; class paths are only strings, never imported."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
            fe = raw["feature_extractor"]["init_args"]
            bb = raw["backbone"]["init_args"]
            hd = raw["head"]["init_args"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a Vocos config.yaml ({e}).",
                                  f"Download config.yaml from {VOCOS_REPO} again.") from e
        cfg = cls(
            input_channels=int(bb.get("input_channels", cls.input_channels)),
            dim=int(bb["dim"]),
            intermediate_dim=int(bb["intermediate_dim"]),
            num_layers=int(bb["num_layers"]),
            adanorm_num_embeddings=int(bb.get("adanorm_num_embeddings")
                                       or len(fe.get("bandwidths", cls.bandwidths))),
            n_fft=int(hd["n_fft"]),
            hop_length=int(hd["hop_length"]),
            padding=str(hd.get("padding", "same")),
            bandwidths=tuple(float(b) for b in fe.get("bandwidths", cls.bandwidths)),
        )
        if cfg.padding != "same":
            raise CheckpointError(f"Vocos head padding {cfg.padding!r} is not supported (only 'same').",
                                  f"Use the {VOCOS_REPO} model.")
        if int(hd.get("dim", cfg.dim)) != cfg.dim:
            raise CheckpointError("Vocos config.yaml: head dim differs from backbone dim.",
                                  f"Download config.yaml from {VOCOS_REPO} again.")
        return cfg


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then a per-bandwidth scale and shift. x: [B, T, C]."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.dim = dim
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)

    def forward(self, x: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        x = F.layer_norm(x, (self.dim,), eps=LN_EPS)
        return x * self.scale.weight[bandwidth_id] + self.shift.weight[bandwidth_id]


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(AdaLN(depthwise_conv(x))). x: [B, C, T]."""

    def __init__(self, dim: int, intermediate_dim: int, num_embeddings: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(num_embeddings, dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, T, C]
        h = self.norm(h, bandwidth_id)
        h = self.pwconv2(F.gelu(self.pwconv1(h)))  # exact erf GELU, as vocos (tanh misses by ~3e-4)
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """features [B, input_channels, T] -> hidden [B, T, dim]."""

    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.embed = nn.Conv1d(cfg.input_channels, cfg.dim, kernel_size=7, padding=3)
        self.norm = AdaLayerNorm(cfg.adanorm_num_embeddings, cfg.dim)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate_dim, cfg.adanorm_num_embeddings)
            for _ in range(cfg.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        x = self.embed(x)
        x = self.norm(x.transpose(1, 2), bandwidth_id).transpose(1, 2)
        for block in self.convnext:
            x = block(x, bandwidth_id)
        return self.final_layer_norm(x.transpose(1, 2))


class SameISTFT(nn.Module):
    """Vocos' ISTFT with 'same' padding: irfft, window, overlap-add, divide by the real window
    envelope, trim (n_fft - hop) / 2 on each side. [B, n_fft/2+1, T] complex -> [B, hop*T]."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft))  # periodic, as torch's default

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, n_fft, T] -> [B, (T-1)*hop + n_fft]."""
        n_frames = frames.shape[-1]
        out = F.fold(frames, output_size=(1, (n_frames - 1) * self.hop_length + self.n_fft),
                     kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        return out[:, 0, 0, :]

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        pad = (self.n_fft - self.hop_length) // 2
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        y = self._overlap_add(frames)
        env = self._overlap_add(self.window.square()[None, :, None].expand(1, -1, spec.shape[-1]))
        y, env = y[:, pad:-pad], env[:, pad:-pad]
        return y / env


class ISTFTHead(nn.Module):
    """hidden [B, T, dim] -> waveform [B, hop*T]: log-magnitude and phase, clipped magnitude."""

    def __init__(self, cfg: VocosConfig):
        super().__init__()
        self.out = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.istft = SameISTFT(cfg.n_fft, cfg.hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logmag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        mag = torch.exp(logmag).clamp(max=MAG_CLIP)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return self.istft(spec)


class CodebookFeatures(nn.Module):
    """codes [B, T, K] -> features [B, input_channels, T]: sum of each codebook's embedding row."""

    def __init__(self, n_rows: int, channels: int):
        super().__init__()
        self.codebook_weights = nn.Parameter(torch.zeros(n_rows, channels))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(codes.shape[-1], device=codes.device) * CODEBOOK_SIZE
        return F.embedding(codes + offsets, self.codebook_weights).sum(dim=2).transpose(1, 2)


class VocosModel(nn.Module):
    """The three parts under the hub's key prefixes: feature_extractor, backbone, head."""

    def __init__(self, cfg: VocosConfig, n_codebook_rows: int):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = CodebookFeatures(n_codebook_rows, cfg.input_channels)
        self.backbone = VocosBackbone(cfg)
        self.head = ISTFTHead(cfg)

    def forward(self, codes: torch.Tensor, bandwidth_id: int = BANDWIDTH_ID) -> torch.Tensor:
        """codes [B, T, K] int64 -> waveform [B, hop*T] float32."""
        return self.head(self.backbone(self.feature_extractor(codes), bandwidth_id))


def resolve_model_folder(folder_or_repo: str | Path, name: str, repo: str) -> Path:
    """A local folder as given, or, for the default hub repo id `repo`, the model store's folder
    for model `name` (downloaded into the hub cache when allowed; ModelMissingError otherwise)."""
    path = Path(folder_or_repo)
    if path.is_dir():
        return path
    if str(folder_or_repo) != repo:
        raise ModelMissingError(f"Model folder {folder_or_repo} does not exist.",
                                f"Pass a folder holding the {name} files, or the repo id {repo!r}.")
    from core.store import resolve_model  # imported late: the store pulls in huggingface_hub

    return Path(resolve_model(name))


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as e:
        raise ModelMissingError(f"Vocos weights not found: {path}.",
                                f"Download pytorch_model.bin from {VOCOS_REPO}.") from e
    except Exception as e:  # unpickling refused or a corrupt zip: both mean a bad file
        from core.checkpoint import why_unloadable
        from core.store import REGISTRY

        why = why_unloadable(path, e, REGISTRY["vocos"].approx_bytes)
        raise CheckpointError(f"{path} is not a loadable Vocos checkpoint: {why}.",
                              f"Download pytorch_model.bin from {VOCOS_REPO} again.") from e
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict.",
                              f"Use pytorch_model.bin from {VOCOS_REPO}.")
    # Vocos.from_pretrained adds the EnCodec model's weights under this prefix; decoding never uses them.
    return {k: v for k, v in sd.items() if not k.startswith("feature_extractor.encodec.")}


class Vocos:
    """Codes -> 24 kHz waveform. `Vocos.from_pretrained(folder).decode(codes [T, 8])`."""

    def __init__(self, model: VocosModel, device: str | torch.device = "cpu"):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        self.hop_length = model.cfg.hop_length
        self.sample_rate = SAMPLE_RATE

    @classmethod
    def from_pretrained(cls, folder_or_repo: str | Path = VOCOS_REPO,
                        device: str | torch.device = "cpu") -> "Vocos":
        """Load `config.yaml` + `pytorch_model.bin` (hub layout). Strict: every key and shape must match."""
        folder = resolve_model_folder(folder_or_repo, "vocos", VOCOS_REPO)
        cfg = VocosConfig.from_yaml(folder / "config.yaml")
        sd = _load_state_dict(folder / "pytorch_model.bin")
        rows = sd.get("feature_extractor.codebook_weights")
        if rows is None or rows.ndim != 2:
            raise CheckpointError(f"{folder / 'pytorch_model.bin'} has no codebook_weights.",
                                  f"Download pytorch_model.bin from {VOCOS_REPO} again.")
        model = VocosModel(cfg, rows.shape[0])
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"Vocos weights do not match config.yaml: {str(e)[:400]}",
                                  f"Use config.yaml and pytorch_model.bin of one {VOCOS_REPO} copy.") from e
        return cls(model, device)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, bandwidth_id: int = BANDWIDTH_ID,
               chunk_frames: int = 2048) -> torch.Tensor:
        """codes [T, K] or [B, T, K] int (K = 8 at 6 kbps) -> float32 [hop*T] or [B, hop*T] on CPU.

        Long inputs are decoded in chunks of `chunk_frames` with enough context on each side that
        the result equals a one-pass decode (the receptive field is finite), keeping memory flat.
        """
        codes = torch.as_tensor(codes)
        single = codes.ndim == 2
        if single:
            codes = codes[None]
        max_books = self.model.feature_extractor.codebook_weights.shape[0] // CODEBOOK_SIZE
        if codes.ndim != 3 or codes.shape[-1] > max_books:
            raise ValueError(f"codes must be [T, K] or [B, T, K], K <= {max_books}; got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= CODEBOOK_SIZE):
            raise ValueError(f"codes must lie in 0..{CODEBOOK_SIZE - 1}")
        codes = codes.to(self.device, torch.long)
        n_frames = codes.shape[1]
        if n_frames == 0:
            out = torch.zeros(codes.shape[0], 0)
        elif n_frames <= chunk_frames:
            out = self.model(codes, bandwidth_id).float().cpu()
        else:
            out = self._decode_chunked(codes, bandwidth_id, chunk_frames)
        return out[0] if single else out

    def _context_frames(self) -> int:
        # embed and each ConvNeXt dwconv see 3 frames each side; the ISTFT overlaps n_fft/hop frames.
        return 3 * (1 + self.cfg.num_layers) + self.cfg.n_fft // self.cfg.hop_length + 1

    def _decode_chunked(self, codes: torch.Tensor, bandwidth_id: int, chunk: int) -> torch.Tensor:
        ctx, hop, n_frames = self._context_frames(), self.hop_length, codes.shape[1]
        pieces = []
        for start in range(0, n_frames, chunk):
            stop = min(start + chunk, n_frames)
            lo, hi = max(0, start - ctx), min(n_frames, stop + ctx)
            wav = self.model(codes[:, lo:hi], bandwidth_id)
            pieces.append(wav[:, (start - lo) * hop:(stop - lo) * hop].float().cpu())
        return torch.cat(pieces, dim=1)
