"""The LM engine (core/lm.py): golden parity, batching, sampling strategies, guards, bad input."""
from __future__ import annotations

import json

import pytest
import torch

from core import native_linear
from core.errors import Stopped, StudioError
from core.lm import Generation, LMRequest, VallEX, read_state_dict
from core.sampling import EOS, Sampling, TokenPicker, filter_logits


pytestmark = pytest.mark.usefixtures("one_thread")


def _configs(golden):
    return sorted(p for p in (golden / "model").iterdir() if p.is_dir())


def _load(cfg_dir, **kw):
    cfg = json.loads((cfg_dir / "config.json").read_text())
    return VallEX.from_checkpoint(cfg_dir / "checkpoint.pt", n_heads=int(cfg["nhead"]), **kw)


def _cases(cfg_dir):
    return json.loads((cfg_dir / "cases.json").read_text())


def _args(c):
    return (torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"]), int(c["prompt_text_len"]),
            torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8))


@pytest.fixture(scope="module")
def tiny_a(golden):
    return _load(golden / "model" / "tiny-a")


@pytest.fixture(scope="module")
def tiny_a_sd(golden):
    sd, _ = read_state_dict(golden / "model" / "tiny-a" / "checkpoint.pt")
    return {k: v.clone() for k, v in sd.items()}


def _controlled(sd, logits_for: dict[int, float], floor: float = -30.0) -> VallEX:
    """tiny-a with the AR's final LayerNorm made constant (weight 0, bias e0), so the AR head
    gives the same logits at every step: W[:, 0] = the wanted logits."""
    sd = dict(sd)
    d = sd["ar_decoder.norm.weight"].shape[0]
    sd["ar_decoder.norm.weight"] = torch.zeros(d)
    e0 = torch.zeros(d)
    e0[0] = 1.0
    sd["ar_decoder.norm.bias"] = e0
    w = torch.zeros(1025, d)
    w[:, 0] = floor
    for tok, val in logits_for.items():
        w[tok, 0] = val
    sd["ar_predict_layer.weight"] = w
    return VallEX.from_state_dict(sd, n_heads=4)


# ------------------------------------------------------------------------------ parity


def _check_reference_cases(model, cases: list[dict], name: str) -> int:
    """Greedy AR codes and NAR codes (on the reference's AR codes) token-exact, fp32."""
    for i, c in enumerate(cases):
        ids, langs, p_len, prompt = _args(c)
        ar = model.generate_ar(ids, langs, p_len, prompt, sampling=Sampling(top_k=1))
        assert ar.dtype == torch.long and ar.tolist() == c["ar_codes"], f"{name}#{i} AR"
        nar = model.generate_nar(ids, langs, p_len, prompt, torch.tensor(c["ar_codes"]))
        assert nar.tolist() == c["nar_codes"], f"{name}#{i} NAR"
        if c["stop"] == "limit":  # the off-by-one cap: exactly 16 x all text ids
            assert len(c["ar_codes"]) == 16 * len(c["text_ids"])
    return len(cases)


def test_golden_parity_ar_and_nar(golden):
    """Every public golden case."""
    assert sum(_check_reference_cases(_load(d), _cases(d), d.name) for d in _configs(golden)) >= 20


def test_generated_models_match_the_reference(tmp_path):
    """8 more random tiny models (widths 4-48, 1-6 heads, 1-4 layers, head sizes down to 2; some
    cases stop by EOS, some at the cap) with the reference program's own greedy tokens, made by
    bench/model_parity_sweep.py --write (its docstring). The checkpoints are rebuilt here from
    their seeds by tests/tiny_models.py, as the sweep built them."""
    import gzip
    from pathlib import Path

    from tests.tiny_models import make_vallex_checkpoint

    raw = gzip.decompress((Path(__file__).parent / "model_sweep_cases.json.gz").read_bytes())
    n = 0
    for k, cfg in enumerate(json.loads(raw)):
        ckpt = make_vallex_checkpoint(tmp_path / f"{k}.pt", cfg["d"], cfg["heads"], cfg["layers"], cfg["seed"],
                                      cfg["eos_bias"])
        name = f"d={cfg['d']} heads={cfg['heads']} layers={cfg['layers']}"
        n += _check_reference_cases(VallEX.from_checkpoint(ckpt, n_heads=cfg["heads"]), cfg["cases"], name)
    assert n == 24


def test_generate_reports_stop_reason_and_codes(golden, tiny_a):
    cases = _cases(golden / "model" / "tiny-a")
    for c in cases[:4]:
        g = tiny_a.generate(*_args(c), sampling=Sampling(top_k=1))
        assert isinstance(g, Generation)
        assert g.codes.shape == (len(c["ar_codes"]), 8) and g.codes.dtype == torch.long
        assert g.codes.tolist() == c["nar_codes"]
        assert g.stop_reason == c["stop"]


def test_batch_equals_one_by_one_greedy(golden, tiny_a):
    """Mixed text lengths, prompt lengths (incl. none), EOS and limit stops in one padded batch."""
    cases = _cases(golden / "model" / "tiny-a")
    reqs = [LMRequest(*_args(c)) for c in cases]
    reqs.append({"text_ids": cases[1]["text_ids"], "text_langs": cases[1]["text_langs"]})  # dict form
    out = tiny_a.generate_batch(reqs, Sampling(top_k=1))
    assert len(out) == len(reqs)
    for g, c in zip(out, cases):
        assert g.codes.tolist() == c["nar_codes"]
        assert g.stop_reason == c["stop"]
    single = tiny_a.generate(cases[1]["text_ids"], cases[1]["text_langs"], 0, None, Sampling(top_k=1))
    assert torch.equal(out[-1].codes, single.codes)


def test_batch_sampling_matches_single_with_seeds(golden, tiny_a):
    cases = _cases(golden / "model" / "tiny-a")[:3]
    s = Sampling(top_k=50, temperature=1.0, seed=77, max_frames=40)
    batch = tiny_a.generate_batch([LMRequest(*_args(c)) for c in cases], s)
    for i, c in enumerate(cases):
        one = tiny_a.generate(*_args(c), sampling=Sampling(top_k=50, seed=77 + i, max_frames=40))
        assert batch[i].seed == 77 + i
        assert torch.equal(batch[i].codes, one.codes)


def test_stop_is_asked_every_step_and_ends_the_generation_at_once(golden, tiny_a, monkeypatch):
    cases = _cases(golden / "model" / "tiny-a")[:3]
    reqs = [LMRequest(*_args(c)) for c in cases]
    asked, nar_from = [], []
    real_nar = tiny_a._nar

    def nar(*a, **k):
        nar_from.append(len(asked))
        return real_nar(*a, **k)

    monkeypatch.setattr(tiny_a, "_nar", nar)
    out = tiny_a.generate_batch(reqs, Sampling(top_k=1), stop=lambda: asked.append(1) and False)
    assert [g.codes.tolist() for g in out] == [c["nar_codes"] for c in cases]  # asking changes nothing
    ar_asks = nar_from[0]
    assert ar_asks >= max(len(c["ar_codes"]) for c in cases)  # once per AR step
    assert len(asked) - ar_asks == 7 * sum(1 for c in cases if c["ar_codes"])  # once per NAR pass
    for when, nar_runs in [(2, 0), (ar_asks + 1, 1), (len(asked), 1)]:  # in the AR, the first and the last NAR pass
        asked, nar_from = [], []
        with pytest.raises(Stopped, match="stopped on request"):
            tiny_a.generate_batch(reqs, Sampling(top_k=1), stop=lambda: asked.append(1) or len(asked) >= when)
        assert len(asked) == when and len(nar_from) == nar_runs  # nothing computed after the stop
    with pytest.raises(Stopped):  # one greedy request: the drafted decoding asks too
        tiny_a.generate(*_args(cases[0]), sampling=Sampling(top_k=1), stop=lambda: True)
    with pytest.raises(StudioError, match="stop must be a callable .* not bool"):
        tiny_a.generate_batch(reqs, Sampling(top_k=1), stop=True)


# ------------------------------------------------------------------------------ reference quirks


def test_immediate_eos_gives_empty(tiny_a_sd):
    model = _controlled(tiny_a_sd, {EOS: 10.0, 5: 0.0})
    ar = model.generate_ar([10, 11, 12], [0, 0, 0], 0, None, sampling=Sampling(top_k=1))
    assert ar.shape == (0,)
    nar = model.generate_nar([10, 11, 12], [0, 0, 0], 0, None, ar)
    assert nar.shape == (0, 8)
    g = model.generate([10, 11, 12], [0, 0, 0], 0, None, Sampling(top_k=1))
    assert g.codes.shape == (0, 8) and g.stop_reason == "eos" and any("stopped at once" in w for w in g.warnings)


def test_length_cap_and_max_frames(tiny_a_sd):
    model = _controlled(tiny_a_sd, {5: 3.0, 6: 2.0}, floor=-5.0)
    g = model.generate([10, 11, 12], [0, 0, 0], 1, torch.zeros(4, 8, dtype=torch.long),
                       Sampling(top_k=1, guards=False))
    assert g.stop_reason == "limit" and g.codes.shape[0] == 16 * 3
    g = model.generate([10, 11, 12], [0, 0, 0], 1, None, Sampling(top_k=1, max_frames=7))
    assert g.stop_reason == "max_frames" and g.codes.shape[0] == 7


# ------------------------------------------------------------------------------ sampling


def test_seed_reproducible_and_reported(golden, tiny_a):
    c = _cases(golden / "model" / "tiny-a")[4]
    a = tiny_a.generate(*_args(c), sampling=Sampling(seed=123, max_frames=60))
    b = tiny_a.generate(*_args(c), sampling=Sampling(seed=123, max_frames=60))
    assert a.seed == 123 and torch.equal(a.codes, b.codes)
    d = tiny_a.generate(*_args(c), sampling=Sampling(seed=124, max_frames=60))
    assert not torch.equal(a.codes, d.codes)
    free = tiny_a.generate(*_args(c), sampling=Sampling(max_frames=60))
    again = tiny_a.generate(*_args(c), sampling=Sampling(seed=free.seed, max_frames=60))
    assert torch.equal(free.codes, again.codes)


def test_temperature_zero_is_greedy(golden, tiny_a):
    c = _cases(golden / "model" / "tiny-a")[0]
    ar = tiny_a.generate_ar(*_args(c), sampling=Sampling(temperature=0.0, seed=1))
    assert ar.tolist() == c["ar_codes"]


def test_filter_logits_top_k_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    k2 = filter_logits(logits, 2, 1.0)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    p = torch.softmax(logits, -1)[0]  # 0.636, 0.234, 0.086, ...
    nucleus = filter_logits(logits, None, 0.8)
    assert torch.isfinite(nucleus).tolist() == [[True, True, False, False, False]]
    assert p[0] < 0.8 < p[0] + p[1]
    assert torch.isfinite(filter_logits(logits, None, 0.5)).sum() == 1  # top-1 always kept
    assert torch.equal(filter_logits(logits, None, 1.0), logits)


def test_sampling_filters_restrict_choices(tiny_a_sd):
    model = _controlled(tiny_a_sd, {5: 2.0, 6: 1.9, 7: 1.8, 8: 1.7, EOS: -30.0}, floor=1.0)
    codes = model.generate_ar([10, 11, 12, 13], [0] * 4, 0, None,
                              Sampling(top_k=2, seed=3, guards=False)).tolist()
    assert set(codes) <= {5, 6} and len(codes) == 64
    codes = model.generate_ar([10, 11, 12, 13], [0] * 4, 0, None, Sampling(seed=3, guards=False)).tolist()
    assert len(set(codes)) > 10  # plain multinomial over the full softmax (the reference default)
    codes = model.generate_ar([10, 11, 12, 13], [0] * 4, 0, None,
                              Sampling(top_p=0.001, seed=3, guards=False)).tolist()
    assert set(codes) == {5}


def test_repetition_aware_sampling_redraws_dominant_code():
    logits = torch.full((1025,), -5.0)
    logits[7] = 3.0  # ~74 % of the mass: nucleus sampling at top_p 0.5 keeps only code 7

    def run(window):
        s = Sampling(top_p=0.5, seed=0, repetition_window=window, repetition_threshold=0.1, guards=False)
        pk = TokenPicker(s, 0)
        return [pk.pick(logits) for _ in range(300)]

    plain, ras = run(0), run(10)
    assert plain.count(7) == 300
    assert 150 < ras.count(7) < 260  # re-drawn from the full distribution when it dominates the window


def test_best_of_picks_highest_normalised_logprob(golden, tiny_a):
    c = _cases(golden / "model" / "tiny-a")[3]
    s = Sampling(seed=5, best_of=3, max_frames=30)
    a = tiny_a.generate(*_args(c), sampling=s)
    b = tiny_a.generate(*_args(c), sampling=s)
    assert torch.equal(a.codes, b.codes) and a.codes.shape[1] == 8
    # The chosen beam is one of the candidates and scores at least as well as beam 0 (= best_of 1).
    req = tiny_a._prepare(*_args(c))
    pickers = []
    orig = TokenPicker.__init__

    def spy(self, *args, **kw):
        orig(self, *args, **kw)
        pickers.append(self)

    TokenPicker.__init__ = spy
    try:
        out = tiny_a._ar([req], s, seeds=[5])[0]
    finally:
        TokenPicker.__init__ = orig
    scores = [p.sum_logprob / (req.T + 1 + len(p.history)) for p in pickers]
    best = max(range(3), key=lambda k: scores[k])
    assert out["codes"] == pickers[best].history
    assert a.codes[:, 0].tolist() == pickers[best].history


def test_decoding_many_requests_without_seeds_gives_each_its_own(golden, tiny_a):
    # With no seeds given, request i samples with seed + i, as generate_batch does (one seed for
    # all would crash or make every request sample alike).
    c = _cases(golden / "model" / "tiny-a")[3]
    req = tiny_a._prepare(*_args(c))
    s = Sampling(seed=7, max_frames=12, guards=False)
    both = tiny_a._ar([req, req], s)
    assert [o["seed"] for o in both] == [7, 8]
    alone = [tiny_a._ar([req], Sampling(seed=k, max_frames=12, guards=False))[0]["codes"] for k in (7, 8)]
    assert [o["codes"] for o in both] == alone


# ------------------------------------------------------------------------------ guards


def test_guard_repeated_code_is_resampled_then_stopped():
    logits = torch.full((1025,), -10.0)
    logits[7], logits[9] = 8.0, 0.0
    pk = TokenPicker(Sampling(seed=1), 1)
    toks = []
    for _ in range(2000):
        t = pk.pick(logits)
        if t == EOS:
            break
        toks.append(t)
    run, longest = 0, 0
    for a, b in zip(toks, toks[1:]):
        run = run + 1 if a == b else 0
        longest = max(longest, run + 1)
    assert longest <= pk.repeat_limit
    assert pk.stop_reason == "guard" and any("repeated" in w for w in pk.warnings)
    assert len(pk.history) < len(toks)  # the stuck tail was trimmed


def test_guard_endless_silence_loop_stops(tiny_a_sd):
    model = _controlled(tiny_a_sd, {3: 5.0, 4: 5.0})  # only two codes: a "silence" loop
    g = model.generate(list(range(10, 40)), [0] * 30, 0, None, Sampling(seed=2))
    assert g.stop_reason == "guard"
    assert any("distinct codes" in w for w in g.warnings)
    assert g.codes.shape[0] < 3 * 75  # trimmed back
    off = model.generate(list(range(10, 40)), [0] * 30, 0, None, Sampling(seed=2, guards=False))
    assert off.stop_reason == "limit" and off.codes.shape[0] == 16 * 30


def test_guard_reports_only_in_greedy(tiny_a_sd):
    model = _controlled(tiny_a_sd, {7: 5.0})
    g = model.generate(list(range(10, 25)), [0] * 15, 0, None, Sampling(top_k=1))
    assert g.stop_reason == "limit" and g.codes.shape[0] == 16 * 15  # tokens unchanged (reference-exact)
    assert set(g.codes[:, 0].tolist()) == {7}
    assert any("repeated" in w and "greedy" in w for w in g.warnings)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kw, needle", [
    (dict(text_ids=[]), "empty text"),
    (dict(text_ids=[1, 2, 5000]), "out of range"),
    (dict(text_ids=[1, -2, 3]), "out of range"),
    (dict(text_langs=[0, 0]), "length mismatch"),
    (dict(text_langs=[0, 0, 7]), "text_langs out of range"),
    (dict(prompt_text_len=3), "prompt_text_len"),
    (dict(prompt_codes=[[0] * 8, [1024] * 8]), "outside 0..1023"),
    (dict(prompt_codes=[[0] * 7]), "[T, 8]"),
    (dict(text_ids=[1.5, 2, 3]), "integers"),
    (dict(text_ids=[[1, 2], [3, 4]]), "1-D"),
])
def test_bad_input_raises_value_error(tiny_a, kw, needle):
    args = dict(text_ids=[1, 2, 3], text_langs=[0, 0, 0], prompt_text_len=1, prompt_codes=None)
    args.update(kw)
    with pytest.raises(ValueError) as e:
        tiny_a.generate_ar(args["text_ids"], args["text_langs"], args["prompt_text_len"], args["prompt_codes"])
    assert needle in str(e.value)
    assert isinstance(e.value, StudioError)


def test_bad_ar_codes_and_sampling(tiny_a):
    with pytest.raises(ValueError, match="outside 0..1023"):
        tiny_a.generate_nar([1, 2, 3], [0, 0, 0], 0, None, [5, 1024])
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="best_of"):
        Sampling(best_of=0)


def test_long_prompt_is_trimmed_with_warning(tiny_a, caplog):
    prompt = torch.randint(0, 1024, (1800, 8))  # 24 s
    ids = list(range(10, 70))
    with caplog.at_level("WARNING"):
        g = tiny_a.generate(ids, [0] * 60, 40, prompt, Sampling(top_k=1, max_frames=5))
    assert any("prompt trimmed" in w for w in g.warnings)
    assert any("prompt trimmed" in r.getMessage() for r in caplog.records)
    req = tiny_a._prepare(ids, [0] * 60, 40, prompt)
    assert req.T + 5 * (60 - 40) <= 22 * 75 + 5 and req.T >= 3 * 75
    assert req.L - req.p_len == 20  # the target text is never cut
    assert torch.equal(req.prompt, prompt[-req.T:])


# ------------------------------------------------------------------------------ precision modes


@pytest.mark.parametrize("kw, floor", [(dict(dtype=torch.bfloat16), 0.8), (dict(quantize="int8"), 0.6),
                                       pytest.param(dict(quantize="int4"), 0.6, marks=pytest.mark.skipif(
                                           not native_linear.int4_available(), reason="no AVX-512 VNNI"))])
def test_reduced_precision_modes_run_and_mostly_agree(golden, kw, floor):
    # Tiny random models (d=32) are far more sensitive to rounding than the real one; the bench
    # reports the agreement figures on every golden case and on the full-size workload.
    cfg_dir = golden / "model" / "tiny-a"
    model = _load(cfg_dir, **kw)
    same = total = 0
    for c in _cases(cfg_dir)[:5]:
        ids, langs, p_len, prompt = _args(c)
        nar = model.generate_nar(ids, langs, p_len, prompt, torch.tensor(c["ar_codes"]))
        assert nar.shape == (len(c["ar_codes"]), 8)
        want = torch.tensor(c["nar_codes"])
        same += int((nar[:, 1:] == want[:, 1:]).sum())
        total += want[:, 1:].numel()
        ar = model.generate_ar(ids, langs, p_len, prompt, sampling=Sampling(top_k=1, max_frames=8))
        assert ar.dtype == torch.long and 0 < ar.numel() <= 8
    assert same / total > floor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_parity(golden):
    """The same code path on a GPU: fp32 greedy AR and NAR token-exact on every golden case,
    a padded batch equal to one by one, seeded sampling reproducible; bf16 and int8 close to fp32."""
    for cfg_dir in _configs(golden):
        model = _load(cfg_dir, device="cuda")
        cases = _cases(cfg_dir)
        for i, c in enumerate(cases):
            ids, langs, p_len, prompt = _args(c)
            ar = model.generate_ar(ids, langs, p_len, prompt, sampling=Sampling(top_k=1))
            assert ar.device.type == "cpu" and ar.tolist() == c["ar_codes"], f"{cfg_dir.name}#{i} AR"
            nar = model.generate_nar(ids, langs, p_len, prompt, torch.tensor(c["ar_codes"]))
            assert nar.tolist() == c["nar_codes"], f"{cfg_dir.name}#{i} NAR"
        batch = model.generate_batch([LMRequest(*_args(c)) for c in cases], Sampling(top_k=1))
        assert [g.codes.tolist() for g in batch] == [c["nar_codes"] for c in cases], cfg_dir.name
        s = Sampling(top_k=50, seed=5, max_frames=30)
        assert torch.equal(model.generate(*_args(cases[0]), sampling=s).codes,
                           model.generate(*_args(cases[0]), sampling=s).codes)
    for kw in (dict(dtype=torch.bfloat16), dict(quantize="int8")):  # int8 on CUDA: weight-only int8
        same = total = 0
        for cfg_dir in _configs(golden):
            model = _load(cfg_dir, device="cuda", **kw)
            left = [t.shape for t in (*model.core.parameters(), *model.core.buffers()) if not t.is_cuda]
            assert not left, f"{kw}: tensors left on the CPU: {left}"
            cases = _cases(cfg_dir)
            for c in cases:
                nar = model.generate_nar(*_args(c), torch.tensor(c["ar_codes"]))
                want = torch.tensor(c["nar_codes"])
                same += int((nar[:, 1:] == want[:, 1:]).sum())
                total += want[:, 1:].numel()
            # batched: runs (cuBLAS picks other kernels for other row counts, so reduced precision
            # is not promised the one-by-one tokens on a GPU)
            batch = model.generate_batch([LMRequest(*_args(c)) for c in cases[:3]], Sampling(top_k=1, max_frames=8))
            assert all(g.codes.shape[1] == 8 and g.codes.shape[0] <= 8 for g in batch)
        assert same / total > 0.6, kw


def test_a_device_this_torch_cannot_use_is_refused_up_front(golden, monkeypatch):
    """torch takes "cuda" on a CPU-only build and fails deep in the first .to(); the engine (and
    Studio, Codec, Vocos: core.devices) refuse it before loading anything, saying what to do."""
    from core.devices import resolve_device

    cfg_dir = golden / "model" / "tiny-a"
    for bad, words in [("tpu", "Unknown device 'tpu'"), ("cuda:x", "Unknown device"), (3.5, "Unknown device")]:
        with pytest.raises(StudioError, match=words):
            _load(cfg_dir, device=bad)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(StudioError) as e:  # a hostile length is clipped in the message
        resolve_device("x" * 100_000)
    assert len(str(e.value)) < 120 and "..." in str(e.value)
    # the other loaders and the pipeline check before touching their model (None here)
    from core.codec import Codec
    from core.synth import Studio
    from core.vocos import Vocos

    for make in (lambda d: Codec(None, d), lambda d: Vocos(None, d), lambda d: Studio(device=d)):
        for bad in ("tpu", "meta"):  # meta (shapes, no data) only for the engine's schema check
            with pytest.raises(StudioError, match="Unknown device|not supported"):
                make(bad)
    if not torch.cuda.is_available():
        with pytest.raises(StudioError, match="not available") as e:
            _load(cfg_dir, device="cuda")
        assert "--device cpu" in e.value.hint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(StudioError, match=r"'cuda:2' does not exist: this machine has 2 CUDA GPU") as e:
        resolve_device("cuda:2")
    assert "cuda:0 .. cuda:1" in e.value.hint
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
