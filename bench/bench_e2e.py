#!/usr/bin/env python3
"""End-to-end speed: text -> phonemes -> AR + NAR -> Vocos -> waveform, through `core.synth.Studio`.

Builds a models folder in the real formats with full-size random weights (the VALL-E X checkpoint
of bench_lm.py, Vocos and EnCodec at their public sizes) and times `Studio.synthesize` with a
bundled voice cut to the LM bench's prompt (3 s, 8 transcript ids), per precision mode, each in
its own subprocess:
  - one sentence capped at 5.12 s of audio (the LM bench's 384 frames), and
  - a 10-sentence text (fixed prompt: sentences are batched), each sentence capped at 5.12 s.
Random weights never pick EOS (bench_lm.py sets its logit low), so every sentence runs to the cap.
Reported: wall seconds, audio seconds, RTF (wall / audio; <= 1.0 is real time), the LM's share.

    .venv/bin/python bench/bench_e2e.py [--modes fp32,bf16,int8] [--threads 2] [--device cuda] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._weights import SCHEMA  # noqa: E402
CAP_S = 384 / 75

ONE = "Good morning, how are you today?"
TEN = " ".join([
    "The train was late again.", "She opened the window.", "Our team finished early.",
    "The museum is closed today.", "He forgot his umbrella.", "Please send the report.",
    "The children built a castle.", "We walked along the river.", "The market opens early.",
    "Set your alarm tonight.",
])


def bench_voice():
    """The LM bench's prompt size: a bundled voice cut to 3 s (225 frames) and 8 transcript ids."""
    from core.voices import Voice, VoiceLibrary

    alan = VoiceLibrary().load("alan")
    return Voice("bench-3s", alan.audio_tokens[:225], list(alan.text_ids[:8]), alan.language)


def build_models(folder: Path, ckpt: Path) -> Path:
    """models/{vallex,vocos,encodec} at full size with random weights (written once)."""
    from tests.tiny_models import make_encodec_folder, make_vocos_folder

    if (folder / "READY").exists():
        return folder
    (folder / "vallex").mkdir(parents=True, exist_ok=True)
    link = folder / "vallex" / "vallex-checkpoint.pt"
    if not link.exists():
        link.symlink_to(ckpt)
    make_vocos_folder(folder / "vocos", dim=384, inter=1152, layers=8)  # charactr/vocos-encodec-24khz sizes
    make_encodec_folder(folder / "encodec", num_filters=32, hidden_size=128)  # facebook/encodec_24khz sizes
    (folder / "READY").write_text("full-size random weights for bench_e2e.py\n")
    return folder


def worker(args) -> dict:
    import torch

    from core.synth import Studio
    from core.synth_types import SynthOptions

    torch.set_num_threads(args.threads)
    studio = Studio(args.models, device=args.device, dtype=args.mode, offline=True)
    t = time.perf_counter()
    studio._load()
    load_s = time.perf_counter() - t
    opts = SynthOptions(language="en", top_k=1, seed=0, max_sentence_s=CAP_S, max_chars=40)
    voice = bench_voice()
    studio.synthesize("Hello there.", voice=voice, options=opts)  # warm-up
    out = {"mode": args.mode, "threads": args.threads, "load_s": round(load_s, 1)}
    for name, text in (("one_sentence", ONE), ("ten_sentences", TEN)):
        t = time.perf_counter()
        res = studio.synthesize(text, voice=voice, options=opts)
        wall = time.perf_counter() - t
        lm = sum(s.timings.get("engine_s", 0.0) for s in res.sentences)
        out[name] = {"sentences": len(res.sentences), "audio_s": round(res.seconds, 2), "wall_s": round(wall, 2),
                     "rtf": round(wall / max(res.seconds, 1e-9), 3), "lm_s": round(lm, 2),
                     "rest_s": round(wall - lm, 2)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    out["device"] = args.device
    if args.device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() // 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="fp32,bf16,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--ckpt", default=str(Path(tempfile.gettempdir()) / "vallex-bench" / "full-random.pt"))
    ap.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "vallex-bench" / "e2e-models"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from core.devices import resolve_device
    from core.errors import StudioError

    try:
        resolve_device(args.device)
    except StudioError as e:
        sys.exit(f"--device: {e.user_message()}")

    from bench import _machine
    from bench._weights import write_checkpoint

    ckpt = write_checkpoint(SCHEMA, args.ckpt)
    models = build_models(Path(args.models), ckpt)
    results = {"threads": args.threads, "cap_s_per_sentence": round(CAP_S, 2), "modes": {},
               "machine_start": _machine.snapshot(args.threads)}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for mode in [m for m in args.modes.split(",") if m]:
        print(f"{mode} ...", flush=True)
        p = subprocess.run([sys.executable, __file__, "--worker", "--mode", mode, "--models", str(models),
                            "--threads", str(args.threads), "--device", args.device], capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
        results["modes"][mode] = json.loads(lines[-1]) if p.returncode == 0 and lines else \
            {"error": (p.stderr or p.stdout)[-600:]}
    results["machine_end"] = _machine.snapshot(args.threads)
    print(f"{'mode':<8}{'text':<16}{'audio s':>9}{'wall s':>8}{'RTF':>7}{'LM s':>7}{'rest s':>8}{'RSS MB':>8}")
    for mode, r in results["modes"].items():
        if "error" in r:
            print(f"{mode:<8}ERROR {r['error']}")
            continue
        for name in ("one_sentence", "ten_sentences"):
            x = r[name]
            print(f"{mode:<8}{name:<16}{x['audio_s']:>9.2f}{x['wall_s']:>8.2f}{x['rtf']:>7.3f}{x['lm_s']:>7.2f}"
                  f"{x['rest_s']:>8.2f}{r['peak_rss_mb']:>8}")
    print(_machine.line(results["machine_start"], results["machine_end"]))
    path = Path(args.json) if args.json else ROOT / "bench" / "results" / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"JSON: {path}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
