"""EnCodec 24 kHz at 6 kbps: prompt audio -> codes [T, 8], and codes -> waveform.

`Codec` wraps transformers' `EncodecModel` (`facebook/encodec_24khz` folder layout) and follows
the reference prompt path exactly: channel mean, peak > 1 normalised, one pass (no chunking),
`bandwidth=6.0`. Two decoders share one interface (`Decoder.decode(codes [T, 8]) -> [320*T]`):
`Vocos` (the better one, `core/vocos.py`) and `Codec` itself (EnCodec's decoder, the fallback).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr
import torch

from core.devices import resolve_device
from core.errors import AudioError, CheckpointError, ModelMissingError
from core.vocos import ENCODEC_REPO, Vocos, resolve_model_folder

__all__ = ["Codec", "Decoder", "Vocos", "BANDWIDTH_KBPS"]

log = logging.getLogger(__name__)

BANDWIDTH_KBPS = 6.0  # VALL-E X uses 6 kbps = 8 codebooks; transformers' default (1.5) gives 2


class Decoder(Protocol):
    """Anything that turns codes [T, 8] into a float32 waveform [hop*T] at `sample_rate`."""

    sample_rate: int

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...


def _as_mono_float32(wav, sample_rate: int) -> torch.Tensor:
    """[N] or [N, C] (soundfile layout) -> float32 [N], peak <= 1, in the reference's order:
    stereo is averaged first, then a peak > 1 is normalised, then other layouts are averaged."""
    x = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    if not torch.is_floating_point(x):
        raise AudioError(f"codec input must be float samples, got {x.dtype}.",
                         "Convert with core.audio.load_mono first (it scales integer PCM to [-1, 1]).")
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 2:
        if x.shape[1] > max(x.shape[0], 64):
            raise AudioError(f"audio shape {tuple(x.shape)} looks like [channels, samples].",
                             "Pass [samples, channels] (soundfile's layout) or a 1-D mono array.")
        x = x.T  # [C, N] as the reference holds it; the mean is taken in float32 over C
        x = x.mean(dim=0) if x.shape[0] == 2 else x
    if x.ndim not in (1, 2):
        raise AudioError(f"audio must be [N] or [N, channels], got shape {tuple(x.shape)}.",
                         "Pass a 1-D mono array or a 2-D [samples, channels] array.")
    if x.numel() == 0:
        raise AudioError("the audio is empty.", "Record or upload a few seconds of speech.")
    if not bool(torch.isfinite(x).all()):
        raise AudioError("the audio contains NaN or infinite samples.",
                         "Re-export the recording; it is corrupt.")
    if not 1 <= int(sample_rate) <= 384_000:
        raise AudioError(f"sample rate {sample_rate} Hz is not valid.",
                         "Pass the recording's real sample rate.")
    peak = x.abs().max()
    if peak > 1:
        x = x / peak
    return x.mean(dim=0) if x.ndim == 2 else x


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints a progress bar and a load report on every load: the report says what
    `_check_loading_info` turns into an error, and the bar clutters the CLI and the server log."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _check_loading_info(info: dict, folder: Path) -> None:
    """Strict, like the VALL-E X loader: transformers would fill missing or misshaped weights with
    random numbers and go on, and every voice encoded with them would be noise."""
    missing, mismatched = sorted(info.get("missing_keys") or ()), list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        named = missing[:5] + [str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched[:5]]
        more = len(missing) + len(mismatched) - len(named)
        what = ", ".join(named) + (f" and {more} more" if more > 0 else "")
        kind = "is missing weights" if missing else "has weights of the wrong shape"
        raise CheckpointError(f"EnCodec in {folder} {kind} ({what}); it is damaged or another model.",
                              f"Delete that folder's model.safetensors and download {ENCODEC_REPO} again "
                              "(`python launch.py download encodec`).")
    if info.get("unexpected_keys"):
        log.warning("EnCodec in %s has %d weights this model does not use (ignored): %s", folder,
                    len(info["unexpected_keys"]), ", ".join(sorted(info["unexpected_keys"])[:5]))


class Codec:
    """EnCodec 24 kHz codec. `Codec.from_pretrained(folder).encode(wav, sr) -> LongTensor [T, 8]`."""

    def __init__(self, model, device: str | torch.device = "cpu", bandwidth: float = BANDWIDTH_KBPS):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.bandwidth = float(bandwidth)
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop_length = int(np.prod(cfg.upsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop_length
        bits = int(np.log2(cfg.codebook_size))
        self.n_codebooks = int(1000 * self.bandwidth // (self.frame_rate * bits))

    @classmethod
    def from_pretrained(cls, folder_or_repo: str | Path = ENCODEC_REPO,
                        device: str | torch.device = "cpu") -> "Codec":
        """Load a `config.json` + `model.safetensors` folder (either weight-norm spelling works:
        legacy `weight_g/weight_v` is renamed by transformers on load). Weight norm is then folded
        into plain weights: the same numbers, computed once instead of on every call."""
        from safetensors import SafetensorError
        from transformers import EncodecModel  # heavy import, only when a codec is loaded

        folder = resolve_model_folder(folder_or_repo, "encodec", ENCODEC_REPO)
        if not (folder / "config.json").is_file():
            raise ModelMissingError(f"EnCodec config.json not found in {folder}.",
                                    f"Download {ENCODEC_REPO} (config.json and model.safetensors) into it.")
        try:
            with _quiet_transformers():
                model, info = EncodecModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # corrupt/pickled weights
            why = ("some weights have the wrong shape (it is damaged or another model)"
                   if "mismatched" in str(e) else str(e)[:300])
            raise CheckpointError(f"Cannot load EnCodec from {folder}: {why}",
                                  f"Delete that folder's model.safetensors and download {ENCODEC_REPO} again "
                                  "(`python launch.py download encodec`).") from e
        _check_loading_info(info, folder)
        if model.config.audio_channels != 1 or model.config.normalize or model.config.chunk_length_s:
            raise CheckpointError("This EnCodec config is not the mono 24 kHz model VALL-E X uses.",
                                  f"Use {ENCODEC_REPO}.")
        _fold_weight_norm(model)
        return cls(model, device)

    @torch.inference_mode()
    def encode(self, wav, sample_rate: int) -> torch.Tensor:
        """wav float32 [N] or [N, C] at `sample_rate` -> codes LongTensor [ceil(N'/320), 8] on CPU.

        The reference prompt path: channel mean, peak > 1 normalised to 1, resampled to 24 kHz
        (soxr HQ here; the reference's torchaudio sinc resampler differs slightly, so codes for
        non-24 kHz input can differ from it), then one encoder pass at 6 kbps.
        """
        x = _as_mono_float32(wav, sample_rate)
        if int(sample_rate) != self.sample_rate:
            x = torch.from_numpy(soxr.resample(x.numpy(), int(sample_rate), self.sample_rate, quality="HQ"))
        out = self.model.encode(x.to(self.device)[None, None], bandwidth=self.bandwidth)
        codes = out.audio_codes  # [chunks=1, B=1, K, T]
        return codes[0, 0].T.contiguous().cpu().long()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [T, K] int -> float32 waveform [320*T] on CPU (EnCodec's own decoder)."""
        codes = torch.as_tensor(codes).to(self.device, torch.long)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [T, K], got {tuple(codes.shape)}")
        if codes.shape[0] == 0:
            return torch.zeros(0)
        audio = self.model.decode(codes.T[None, None], [None]).audio_values  # [1, 1, N]
        return audio[0, 0, : codes.shape[0] * self.hop_length].float().cpu()


def _fold_weight_norm(model) -> None:
    """Replace weight-norm parametrizations by their computed weight (bit-identical forward)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
