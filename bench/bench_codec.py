"""Codec and vocoder speed: EnCodec encode/decode and Vocos decode, in seconds of audio per second.

Uses the real weights from a models folder when present (`--models`, default: the store's folder),
else real-size models with random weights (speed does not depend on the values). Warm-up runs are
timed apart; each figure is the median of `--repeat` runs, with the device synchronised.

    .venv/bin/python bench/bench_codec.py --threads 2
"""
from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.codec import Codec, Vocos  # noqa: E402
from core.vocos import VocosConfig, VocosModel  # noqa: E402

log = logging.getLogger("bench_codec")
SR = 24000


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int) -> tuple[float, float]:
    """(first call seconds, median of `repeat` later calls)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs)


def load_models(models: Path | None, device: str) -> tuple[Codec, Vocos, str]:
    """Real weights when `models` holds both, else real-size models with random weights."""
    has = lambda sub, name: models is not None and (models / sub / name).is_file()  # noqa: E731
    if has("encodec", "config.json") and has("vocos", "config.yaml"):
        codec = Codec.from_pretrained(models / "encodec", device)
        return codec, Vocos.from_pretrained(models / "vocos", device), f"real weights from {models}"
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    enc = EncodecModel(EncodecConfig())  # the defaults are facebook/encodec_24khz's sizes
    for layer in enc.quantizer.layers:  # non-zero codebooks, as a trained model has
        layer.codebook.embed.normal_()
    codec = Codec(enc, device)
    voc = VocosModel(VocosConfig(), 16 * 1024)
    for p in voc.parameters():
        torch.nn.init.normal_(p, std=0.02)
    voc.head.istft.window.copy_(torch.hann_window(1280))
    return codec, Vocos(voc, device), "random weights, real-size architectures"


def speech_like(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    voiced = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))  # a 3 Hz "syllable" rhythm
    return (voiced + 0.02 * rng.normal(size=t.size)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", type=Path, default=None, help="models folder (default: the store's)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.models is None:
        from core.store import models_folder

        args.models = models_folder()
    codec, vocos, what = load_models(args.models, args.device)
    log.info("device %s, %d threads, %s", args.device, args.threads, what)

    rows = []
    for seconds in (5.0, 10.0):
        wav = speech_like(seconds)
        first, t = timed(lambda: codec.encode(wav, SR), args.device, args.repeat)
        rows.append((f"EnCodec encode {seconds:.0f} s", first, t, seconds))
        codes = codec.encode(wav, SR)
        first, t = timed(lambda: codec.decode(codes), args.device, args.repeat)
        rows.append((f"EnCodec decode {seconds:.0f} s", first, t, seconds))
    for seconds in (5.0, 20.0, 60.0):
        codes = torch.randint(0, 1024, (int(seconds * 75), 8))
        first, t = timed(lambda: vocos.decode(codes), args.device, args.repeat)
        rows.append((f"Vocos decode {seconds:.0f} s", first, t, seconds))
    batch = torch.randint(0, 1024, (4, 375, 8))
    first, t = timed(lambda: vocos.decode(batch), args.device, args.repeat)
    rows.append(("Vocos decode 4 x 5 s batch", first, t, 20.0))

    log.info("%-28s %9s %9s %9s %11s", "case", "first s", "median s", "RTF", "audio s/s")
    for name, first, t, seconds in rows:
        log.info("%-28s %9.3f %9.3f %9.4f %11.1f", name, first, t, t / seconds, seconds / t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log.info("peak RSS %.0f MiB%s", peak, f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
             if args.device.startswith("cuda") else "")


if __name__ == "__main__":
    main()
