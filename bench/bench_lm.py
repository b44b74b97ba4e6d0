#!/usr/bin/env python3
"""Benchmark of the VALL-E X LM engine (core/lm.py) against the reference program, side by side.

Workload (the issue's): full-size random weights built from ../shared/golden/schema/vallex-full.json
(written once to a temp .pt and loaded through VallEX.from_checkpoint), a 3 s prompt = 225 frames,
24 text ids in all (8 of them the prompt's transcript), greedy, EOS made unlikely (as
ref_bench.py does) so the AR runs to the 16 x 24 = 384-frame cap (5.12 s of audio), 2 threads.

Every measurement runs in its own subprocess, so peak RSS is per mode:
  - reference: ../shared/tools/ref_bench.py with VALLEX_REF (a work tree of github Plachtaa/VALL-E-X)
  - ours, per mode: fp32 (reference-exact; greedy single requests drafted by an int8 copy of the
    AR and verified, core/speculate.py), fp32-plain (the same without drafts), bf16, int8 (each
    int8 backend asked for)
  - batch: 10 sentences (20..28 text ids, same prompt) one by one (plain, and drafted where the
    mode drafts) vs generate_batch
Reported: AR tokens/s, NAR s, LM total s, RTF (LM only, before the vocoder), peak RSS, load time,
ratios against the reference measured in the same run, and the token agreement of bf16 / int8
with fp32 (golden cases + the bench workload). A table goes to stdout, JSON to --json (default
bench/results/lm-<time>.json) and as the last stdout line.

Usage:  python bench/bench_lm.py --ref /path/to/VALL-E-X [--modes fp32,bf16,int8-dynamic,int8-weight]
        [--batch-modes int8-dynamic] [--threads 2] [--repeat 3] [--no-ref] [--quick]
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
from bench._weights import GOLDEN, SCHEMA  # noqa: E402
SHARED = ROOT.parent / "shared"
REF_BENCH = SHARED / "tools" / "ref_bench.py"

PROMPT_FRAMES, TEXT_IDS, PROMPT_TEXT = 225, 24, 8
MODES = {
    "fp32": {},
    "fp32-plain": {},  # fp32 without the int8 draft (MODE_ENV): plain one-code-a-step greedy decoding
    "bf16": {"dtype": "bf16"},
    "int8": {"quantize": "int8"},
    "int8-dynamic": {"quantize": "int8-dynamic"},
    "int8-weight": {"quantize": "int8-weight"},
    "int8-torchao": {"quantize": "int8-torchao"},
    "int4": {"quantize": "int4"},
}
MODE_ENV = {"fp32-plain": {"VALLEX_SPECULATE": "0"}}  # set in the mode's worker process


def _rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _gpu_mb(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"device_name": torch.cuda.get_device_name(), "peak_gpu_mb": torch.cuda.max_memory_allocated() // 2**20}


def _workload(n_text=TEXT_IDS, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 70, (n_text,), generator=g)
    langs = torch.zeros(n_text, dtype=torch.long)
    prompt = torch.randint(0, 1024, (PROMPT_FRAMES, 8), generator=g)
    return ids, langs, prompt


def _agree(a, b) -> float:
    n = min(len(a), len(b))
    if max(len(a), len(b)) == 0:
        return 1.0
    return sum(int(x == y) for x, y in zip(a[:n], b[:n])) / max(len(a), len(b))


def _first_diff(a, b) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


# ------------------------------------------------------------------------------ workers


def worker_single(args) -> dict:
    import torch

    from core.lm import VallEX, Sampling

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = VallEX.from_checkpoint(args.ckpt, n_heads=16, device=args.device, **MODES[args.mode])
    load_s = time.perf_counter() - t0
    rss_load = _rss_mb()
    ids, langs, prompt = _workload()
    s = Sampling(top_k=1, guards=False)
    if args.quick:
        s = Sampling(top_k=1, guards=False, max_frames=96)
    g = model.generate(ids, langs, PROMPT_TEXT, prompt, s)
    draft = model.core.ar.draft.stats.copy() if getattr(model.core.ar, "draft", None) is not None else None
    n = g.codes.shape[0]
    res = {"program": "ours", "mode": args.mode, "threads": args.threads, "generated_frames": n,
           "audio_s": n / 75, "ar_s": round(g.timings["ar_s"], 3),
           "ar_tok_per_s": round(n / g.timings["ar_s"], 2), "nar_s": round(g.timings["nar_s"], 3),
           "total_s": round(g.timings["ar_s"] + g.timings["nar_s"], 3),
           "rtf_lm": round((g.timings["ar_s"] + g.timings["nar_s"]) / (n / 75), 3),
           "peak_rss_mb": _rss_mb(), "rss_after_load_mb": rss_load, "load_s": round(load_s, 2),
           "device": args.device, **_gpu_mb(args.device)}
    if draft and draft["rounds"]:  # drafted greedy decoding (core/speculate.py): its counters
        res["draft"] = {**draft, "codes_per_round": round(n / draft["rounds"], 2)}
    tokens = {"ar": g.codes[:, 0].tolist(), "nar": g.codes.tolist()}
    out_dir = Path(args.work)
    (out_dir / f"tokens-{args.mode}.json").write_text(json.dumps(tokens))
    ref_file = out_dir / "tokens-fp32.json"
    if args.mode != "fp32" and ref_file.exists():
        ref = json.loads(ref_file.read_text())
        res["bench_ar_agreement"] = round(_agree(tokens["ar"], ref["ar"]), 4)
        res["bench_ar_first_diff"] = _first_diff(tokens["ar"], ref["ar"])
        same, steps = _forced_agreement(model, ids, langs, PROMPT_TEXT, prompt, ref["ar"])
        res["bench_ar_forced_agreement"] = round(same / max(steps, 1), 4)
        with torch.inference_mode():
            nar = model.generate_nar(ids, langs, PROMPT_TEXT, prompt, torch.tensor(ref["ar"]))
        want = torch.tensor(ref["nar"])
        res["bench_nar_agreement"] = round(float((nar[:, 1:] == want[:, 1:]).float().mean()), 4)
    if args.mode != "fp32":
        res.update(_golden_agreement(args.mode, args.device))
    return res


def _forced_agreement(model, ids, langs, prompt_text_len, prompt, toks: list[int]) -> tuple[int, int]:
    """Teacher-forced top-1 agreement: the model is fed fp32's greedy tokens and, at each step,
    its argmax is compared with fp32's next token (which is fp32's argmax there). Unlike the
    free-running figure, one early difference does not decide the rest. Returns (same, steps).
    Reads the engine's internals: a measurement, not an API."""
    import torch

    from core.ar import BOS, prefix_mask
    from core.transformer import embed, head_logits

    if not toks:
        return 0, 0
    r = model._prepare(ids, langs, prompt_text_len, prompt)
    c, st, dev = model.core, model.core.ar, model.device
    P = r.L + 1 + r.T
    cache = torch.empty(len(st.layers), 2, 1, st.h, P + len(toks), st.cache_row, dtype=st.kv_dtype, device=dev)
    xa = embed(c.ar_audio_emb, torch.cat([torch.tensor([BOS], device=dev), r.prompt[:, 0]]))
    x = torch.cat([model.text_input(r, nar=False), xa * 1.0 + c.ar_audio_alpha * model.positions(r.T + 1)])[None]
    pos = model.positions(r.T + 1 + len(toks))
    same = 0
    with torch.inference_mode():
        h = st.forward_cached(x, cache, 0, prefix_mask([r.L], [P], P, dev))
        for t, want in enumerate(toks):
            same += int(int(head_logits(c.ar_head, h[:, -1]).argmax(-1)) == want)
            if t + 1 < len(toks):
                xs = embed(c.ar_audio_emb, torch.tensor([want], device=dev)) * 1.0 + c.ar_audio_alpha * pos[r.T + 1 + t]
                h = st.forward_cached(xs[:, None], cache, P + t, None)
    return same, len(toks)


def _golden_agreement(mode, device) -> dict:
    import torch

    from core.lm import VallEX, Sampling

    cases_exact = ar_same = ar_total = nar_same = nar_total = n_cases = forced_same = forced_total = 0
    for cfg_dir in sorted(p for p in (GOLDEN / "model").iterdir() if p.is_dir()):
        cfg = json.loads((cfg_dir / "config.json").read_text())
        model = VallEX.from_checkpoint(cfg_dir / "checkpoint.pt", n_heads=int(cfg["nhead"]), device=device, **MODES[mode])
        for c in json.loads((cfg_dir / "cases.json").read_text()):
            n_cases += 1
            args = (torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"]), c["prompt_text_len"],
                    torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8))
            ar = model.generate_ar(*args, sampling=Sampling(top_k=1, guards=False)).tolist()
            nar = model.generate_nar(*args, torch.tensor(c["ar_codes"]))
            want = torch.tensor(c["nar_codes"])
            fs, ft = _forced_agreement(model, *args, c["ar_codes"])
            forced_same, forced_total = forced_same + fs, forced_total + ft
            ar_same += sum(int(a == b) for a, b in zip(ar, c["ar_codes"]))
            ar_total += max(len(ar), len(c["ar_codes"]))
            nar_same += int((nar[:, 1:] == want[:, 1:]).sum())
            nar_total += want[:, 1:].numel()
            cases_exact += int(ar == c["ar_codes"] and torch.equal(nar, want))
    return {"golden_cases_exact": f"{cases_exact}/{n_cases}",
            "golden_ar_agreement": round(ar_same / max(ar_total, 1), 4),
            "golden_ar_forced_agreement": round(forced_same / max(forced_total, 1), 4),
            "golden_nar_agreement": round(nar_same / max(nar_total, 1), 4)}


def worker_batch(args) -> dict:
    import torch

    from core.lm import LMRequest, VallEX, Sampling

    torch.set_num_threads(args.threads)
    model = VallEX.from_checkpoint(args.ckpt, n_heads=16, device=args.device, **MODES[args.mode])
    _, _, prompt = _workload()
    reqs = []
    for i, n_text in enumerate([20, 21, 22, 23, 24, 24, 25, 26, 27, 28]):
        ids, langs, _ = _workload(n_text, seed=100 + i)
        reqs.append(LMRequest(ids, langs, PROMPT_TEXT, prompt))
    cap = args.batch_frames or (96 if args.quick else None)
    s = Sampling(top_k=1, guards=False, max_frames=cap)
    # One by one, plain decoding (one code a step): the baseline batching is measured against, as
    # it is for sampled decoding. Where greedy single requests are drafted (fp32: core/speculate.py),
    # one by one drafted is measured as well and reported beside it.
    from core import speculate

    drafted = speculate.available(model.core.ar)  # a draft, and VALLEX_SPECULATE not off
    was = os.environ.get("VALLEX_SPECULATE")
    os.environ["VALLEX_SPECULATE"] = "0"
    one = [model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s) for r in reqs]
    if was is None:
        os.environ.pop("VALLEX_SPECULATE")
    else:
        os.environ["VALLEX_SPECULATE"] = was
    extra = {}
    if drafted:
        fast = [model.generate(r.text_ids, r.text_langs, r.prompt_text_len, r.prompt_codes, s) for r in reqs]
        ard = sum(g.timings["ar_s"] for g in fast)
        extra = {"one_by_one_drafted_ar_tok_per_s": round(sum(g.codes.shape[0] for g in fast) / ard, 2),
                 "one_by_one_drafted_same_tokens": all(torch.equal(a.codes, b.codes) for a, b in zip(one, fast))}
    batch = model.generate_batch(reqs, s)
    frames = sum(g.codes.shape[0] for g in one)
    ar1 = sum(g.timings["ar_s"] for g in one)
    nar1 = sum(g.timings["nar_s"] for g in one)
    arb, narb = batch[0].timings["ar_s"], batch[0].timings["nar_s"]
    same = all(torch.equal(a.codes, b.codes) for a, b in zip(one, batch))
    ar_same = all(torch.equal(a.codes[:, 0], b.codes[:, 0]) for a, b in zip(one, batch))
    if drafted:
        extra["batch_vs_drafted"] = round(frames / arb / extra["one_by_one_drafted_ar_tok_per_s"], 2)
    return {"program": "ours-batch", "mode": args.mode, "sentences": len(reqs), "frames": frames,
            "frames_cap": cap,
            "one_by_one_ar_tok_per_s": round(frames / ar1, 2), "batch_ar_tok_per_s": round(frames / arb, 2),
            "ar_speedup": round(ar1 / arb, 2), **extra,
            "one_by_one_lm_s": round(ar1 + nar1, 2), "batch_lm_s": round(arb + narb, 2),
            "lm_speedup": round((ar1 + nar1) / (arb + narb), 2),
            "one_by_one_nar_s": round(nar1, 2), "batch_nar_s": round(narb, 2),
            "ar_tokens_equal": ar_same, "all_tokens_equal": same, "peak_rss_mb": _rss_mb(),
            "device": args.device, **_gpu_mb(args.device)}


# ------------------------------------------------------------------------------ driver


def _median(runs: list[dict]) -> dict:
    """One result from several rounds: the median of every timing / speed figure, the largest
    peak RSS, everything else from the first round. An error in any round is reported as is."""
    import statistics

    for r in runs:
        if "error" in r:
            return r
    out = dict(runs[0])
    if len(runs) > 1:
        for key, v in runs[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and key not in ("threads", "generated_frames"):
                vals = [r[key] for r in runs]
                out[key] = max(vals) if key.startswith("peak_rss") else round(statistics.median(vals), 3)
        out["rounds"] = len(runs)
    return out


def _run(cmd, env=None, timeout=3600) -> dict:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout)[-800:], "wall_s": round(time.perf_counter() - t, 1)}
    out = json.loads(lines[-1])
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=os.environ.get("VALLEX_REF"), help="work tree of Plachtaa/VALL-E-X")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference run")
    ap.add_argument("--modes", default="fp32,bf16,int8-dynamic,int8-weight")
    ap.add_argument("--batch-modes", default="fp32,int8-dynamic")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ours only; the reference runs on the CPU)")
    ap.add_argument("--ckpt", default=str(Path(tempfile.gettempdir()) / "vallex-bench" / "full-random.pt"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="96 frames instead of 384 (smoke run)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (reference, every mode), interleaved; each figure is the median")
    ap.add_argument("--batch-frames", type=int, default=None,
                    help="cap the frames per sentence in the batch comparison (default: the 16 x ids cap)")
    ap.add_argument("--worker", choices=["single", "batch"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.worker:
        import torch

        try:
            dev = torch.device(args.device)
        except RuntimeError:
            sys.exit(f"--device {args.device!r}: use cpu or cuda (cuda:N)")
        if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
            sys.exit(f"--device {args.device!r}: not available here (cpu, or cuda with a CUDA build and a GPU)")

    if args.worker:
        fn = worker_single if args.worker == "single" else worker_batch
        print(json.dumps(fn(args)))
        return

    from bench import _machine
    from bench._weights import write_checkpoint

    t = time.perf_counter()
    ckpt = write_checkpoint(SCHEMA, args.ckpt)
    print(f"weights: {ckpt} ({ckpt.stat().st_size / 1e9:.2f} GB, ready in {time.perf_counter() - t:.0f} s)",
          flush=True)
    work = tempfile.mkdtemp(prefix="bench-lm-")
    results: dict = {"workload": {"prompt_frames": PROMPT_FRAMES, "text_ids": TEXT_IDS, "greedy": True,
                                  "generated_frames_target": 16 * TEXT_IDS, "threads": args.threads,
                                  "quick": args.quick},
                     "machine": {"cpus": os.cpu_count(), "start": _machine.snapshot(args.threads)}}
    if not args.no_ref and (not args.ref or not Path(args.ref, "models", "vallex.py").exists()):
        sys.exit("--ref DIR (or VALLEX_REF) must be a work tree of github Plachtaa/VALL-E-X "
                 "(or pass --no-ref)")
    modes = [m for m in args.modes.split(",") if m]
    if "fp32" in modes:  # first: the others' agreement is measured against its tokens
        modes.remove("fp32")
        modes.insert(0, "fp32")
    # Interleaved rounds (reference, then each mode): slow drifts of a shared machine hit all of
    # them alike; each figure is the median over the rounds, every round is kept in the JSON.
    rounds: dict = {"reference": [], **{m: [] for m in modes}}
    py = sys.executable
    for k in range(max(1, args.repeat)):
        tag = f" (round {k + 1}/{args.repeat})" if args.repeat > 1 else ""
        if not args.no_ref:
            env = dict(os.environ, VALLEX_REF=str(Path(args.ref).resolve()))
            print(f"reference{tag} ...", flush=True)
            rounds["reference"].append(_run([py, str(REF_BENCH), "--threads", str(args.threads)], env=env))
            print(f"  {rounds['reference'][-1]}", flush=True)
        for m in modes:
            print(f"ours {m}{tag} ...", flush=True)
            cmd = [py, __file__, "--worker", "single", "--mode", m, "--ckpt", str(ckpt), "--work", work,
                   "--threads", str(args.threads), "--device", args.device] + (["--quick"] if args.quick else [])
            rounds[m].append(_run(cmd, env=dict(os.environ, **MODE_ENV.get(m, {}))))
            print(f"  {rounds[m][-1]}", flush=True)
    ref = _median(rounds["reference"]) if not args.no_ref else None
    if ref is not None:
        results["reference"] = ref
    results["ours"] = {m: _median(rounds[m]) for m in modes}
    if args.repeat > 1:
        results["rounds"] = rounds
    results["batch"] = {}
    for m in [m for m in args.batch_modes.split(",") if m]:
        print(f"batch of 10, {m} ...", flush=True)
        cmd = [py, __file__, "--worker", "batch", "--mode", m, "--ckpt", str(ckpt), "--work", work,
               "--threads", str(args.threads), "--device", args.device] + (["--quick"] if args.quick else []) + \
            (["--batch-frames", str(args.batch_frames)] if args.batch_frames else [])
        r = _run(cmd, env=dict(os.environ, **MODE_ENV.get(m, {})))
        results["batch"][m] = r
        print(f"  {r}", flush=True)
    results["machine"]["end"] = _machine.snapshot(args.threads)

    # Ratios against the reference of this run.
    if ref and "error" not in ref:
        for m, r in results["ours"].items():
            if "error" in r:
                continue
            r["vs_ref"] = {"ar_tok_per_s": round(r["ar_tok_per_s"] / ref["ar_tok_per_s"], 2),
                           "nar": round(ref["nar_s"] / r["nar_s"], 2),
                           "total": round(ref["total_s"] / r["total_s"], 2),
                           "peak_rss": round(r["peak_rss_mb"] / ref["peak_rss_mb"], 2)}
    _table(results)
    path = Path(args.json) if args.json else ROOT / "bench" / "results" / f"lm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"JSON: {path}")
    print(json.dumps(results))


def _table(res):
    rows = []
    ref = res.get("reference")
    hdr = f"{'program':<22}{'AR tok/s':>10}{'NAR s':>8}{'LM s':>8}{'RTF':>7}{'RSS MB':>8}" \
          f"{'AR x':>7}{'NAR x':>7}{'agree AR free/forced/NAR: golden | bench':>46}"
    rows.append(hdr)
    rows.append("-" * len(hdr))
    if ref and "error" not in ref:
        rows.append(f"{'reference':<22}{ref['ar_tok_per_s']:>10.1f}{ref['nar_s']:>8.2f}{ref['total_s']:>8.2f}"
                    f"{ref['rtf_lm']:>7.2f}{ref['peak_rss_mb']:>8}{'1.00':>7}{'1.00':>7}")
    elif ref:
        rows.append(f"reference: ERROR {ref['error'][-200:]}")
    for m, r in res["ours"].items():
        if "error" in r:
            rows.append(f"{'ours ' + m:<22}ERROR {r['error'][-300:]}")
            continue
        vs = r.get("vs_ref", {})
        agree = ""
        if "golden_ar_agreement" in r:
            nan = float("nan")
            agree = (f"{r['golden_ar_agreement']:.3f}/{r.get('golden_ar_forced_agreement', nan):.3f}/"
                     f"{r['golden_nar_agreement']:.3f} | {r.get('bench_ar_agreement', nan):.3f}/"
                     f"{r.get('bench_ar_forced_agreement', nan):.3f}/{r.get('bench_nar_agreement', nan):.3f}")
        rows.append(f"{'ours ' + m:<22}{r['ar_tok_per_s']:>10.1f}{r['nar_s']:>8.2f}{r['total_s']:>8.2f}"
                    f"{r['rtf_lm']:>7.2f}{r['peak_rss_mb']:>8}{vs.get('ar_tok_per_s', float('nan')):>7.2f}"
                    f"{vs.get('nar', float('nan')):>7.2f}{agree:>46}")
    for m, b in res.get("batch", {}).items():
        if "error" in b:
            rows.append(f"batch {m}: ERROR {b['error'][-300:]}")
            continue
        rows.append(f"batch of {b['sentences']} ({m}): AR {b['one_by_one_ar_tok_per_s']:.1f} -> "
                    f"{b['batch_ar_tok_per_s']:.1f} tok/s (x{b['ar_speedup']:.2f}); LM total "
                    f"{b['one_by_one_lm_s']:.1f} s -> {b['batch_lm_s']:.1f} s (x{b['lm_speedup']:.2f}); "
                    f"same tokens: {b['all_tokens_equal']}"
                    + (f"; one by one drafted {b['one_by_one_drafted_ar_tok_per_s']:.1f} tok/s (batch "
                       f"x{b['batch_vs_drafted']:.2f} of it, same tokens: {b['one_by_one_drafted_same_tokens']})"
                       if "batch_vs_drafted" in b else ""))
    for m, r in res["ours"].items():
        if r.get("draft"):
            d = r["draft"]
            rows.append(f"ours {m}: drafted greedy decoding, {d['rounds']} verify steps for "
                        f"{r['generated_frames']} codes ({d['codes_per_round']} a step), {d['accepted']} of "
                        f"{d['drafted']} drafts kept")
    m = res.get("machine", {})
    if "start" in m and "end" in m:
        from bench import _machine

        rows.append(_machine.line(m["start"], m["end"]))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
