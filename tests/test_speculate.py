"""Drafted greedy decoding (core/speculate.py): an int8 copy of the fp32 AR proposes codes, the
exact step verifies them. It must give exactly the codes and stop reasons of plain decoding, in
every case: drafts all accepted, all rejected, a cap in the middle of a run, an EOS."""
from __future__ import annotations

import json

import pytest
import torch

from core import native, native_linear, speculate
from core.lm import LMRequest, VallEX
from core.sampling import Sampling
from tests.tiny_models import make_vallex_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(
    not (native.available() and native_linear.f32_available() and native.gemm_available()),
    reason="drafting needs the native fp32 step and the int8 GEMV (AVX-512 VNNI)")]


def _golden_model(golden, name):
    cfg = json.loads((golden / "model" / name / "config.json").read_text())
    return VallEX.from_checkpoint(golden / "model" / name / "checkpoint.pt", n_heads=int(cfg["nhead"]))


def _inputs(seed: int, n_text: int, prompt_frames: int, n_ids: int):
    g = torch.Generator().manual_seed(seed)
    L = int(torch.randint(2, 9, (1,), generator=g))
    ids = torch.randint(0, n_ids, (L,), generator=g)
    langs = torch.randint(0, 3, (L,), generator=g)
    prompt = torch.randint(0, 1024, (prompt_frames, 8), generator=g)
    return ids, langs, min(n_text, L - 1) if prompt_frames else 0, prompt


def _both(model, monkeypatch, args, s: Sampling):
    """(drafted generation, plain generation, the draft's counters for the drafted one)."""
    monkeypatch.delenv("VALLEX_SPECULATE", raising=False)
    fast = model.generate(*args, sampling=s)
    stats = dict(model.core.ar.draft.stats)
    monkeypatch.setenv("VALLEX_SPECULATE", "0")
    model.core.ar.draft.stats = {"rounds": 0, "drafted": 0, "accepted": 0}
    plain = model.generate(*args, sampling=s)
    assert model.core.ar.draft.stats["rounds"] == 0, "VALLEX_SPECULATE=0 still drafted"
    monkeypatch.delenv("VALLEX_SPECULATE")
    return fast, plain, stats


def test_only_the_fp32_ar_gets_a_draft(golden, monkeypatch):
    assert _golden_model(golden, "tiny-a").core.ar.draft is not None
    monkeypatch.setenv("VALLEX_SPECULATE", "off")  # off at load: no draft made (no memory spent)
    assert _golden_model(golden, "tiny-a").core.ar.draft is None
    monkeypatch.delenv("VALLEX_SPECULATE")
    path = golden / "model" / "tiny-b" / "checkpoint.pt"
    for kw in ({"quantize": "int8"}, {"dtype": torch.bfloat16}):
        assert VallEX.from_checkpoint(path, n_heads=6, **kw).core.ar.draft is None, kw


def test_rows_at_their_own_slots_give_the_one_by_one_floats(golden):
    """Rows of one sequence at consecutive slots in one call = the same codes fed one call each:
    the same logits and the same cache bytes, for the exact fp32 step, the int8 draft's and the
    bf16 mode's step (float32, int8 and bf16 caches)."""
    model = _golden_model(golden, "tiny-b")
    ar = model.core.ar
    io = model.token_io(64)
    bf = VallEX.from_checkpoint(golden / "model" / "tiny-b" / "checkpoint.pt", n_heads=6, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    for step, dtype, row, io in ((ar.decode_step, torch.float32, ar.hd, io), (ar.draft.step, torch.int8, ar.hd + 4, io),
                                 (bf.core.ar.decode_step, torch.bfloat16, ar.hd, bf.token_io(64))):
        if step is None:  # bf16 without the native bf16 step
            continue
        base = torch.randn(len(ar.layers), 2, 1, ar.h, 40, ar.hd, generator=g)
        base = native.kv_quantize(base) if dtype == torch.int8 else base.to(dtype)
        assert base.shape[-1] == row
        codes, start = [5, 900, 17, 17, 1023, 0], 20
        one = torch.zeros(1, dtype=torch.int32)
        a = base.clone()
        want = torch.cat([step.logits(io, [c], [7 + i], a, start + i, None, one) for i, c in enumerate(codes)])
        b = base.clone()
        n = len(codes)
        got = step.logits(io, codes, [7 + i for i in range(n)], b, start, None, one.expand(n),
                          [start + i for i in range(n)])
        assert torch.equal(got, want)
        assert torch.equal(a, b)
        # a later row's garbage past an earlier row's slot is never read by that row
        c = base.clone()
        c[:, :, :, :, start + 1:] = 0 if dtype == torch.int8 else 1e3
        first = step.logits(io, codes[:2], [7, 8], c, start, None, one.expand(2), [start, start + 1])
        assert torch.equal(first[0], want[0])


def test_bad_slots_are_refused(golden):
    model = _golden_model(golden, "tiny-b")
    ar = model.core.ar
    io = model.token_io(64)
    cache = torch.zeros(len(ar.layers), 2, 1, ar.h, 16, ar.hd)
    one = torch.zeros(2, dtype=torch.int32)
    for slot, slots, needle in ((3, [3], "slots"), (3, [3, 16], "positions"), (2, [3, 4], "least"),
                                (-1, [-1, 0], "outside")):
        with pytest.raises(ValueError, match=needle):
            ar.decode_step.logits(io, [1, 2], [1, 2], cache, slot, None, one, slots)


def test_drafted_greedy_equals_plain_on_golden_and_random_inputs(golden, monkeypatch):
    drafted = accepted = 0
    for name in ("tiny-a", "tiny-b"):
        model = _golden_model(golden, name)
        for c in json.loads((golden / "model" / name / "cases.json").read_text()):
            args = (torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"]), int(c["prompt_text_len"]),
                    torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8))
            for s in (Sampling(top_k=1), Sampling(top_k=1, max_frames=3), Sampling(top_k=1, guards=False)):
                fast, plain, st = _both(model, monkeypatch, args, s)
                assert torch.equal(fast.codes, plain.codes) and fast.stop_reason == plain.stop_reason, (name, s)
                assert fast.codes[:, 0].tolist() == c["ar_codes"][:s.max_frames or None]
                drafted += st["drafted"]
                accepted += st["accepted"]
    assert drafted > 20 and accepted > 10  # the runs were drafted, not decoded plainly


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_drafted_greedy_equals_plain_on_a_wider_model(tmp_path, monkeypatch, seed):
    """A random d=128 model (int8 drafts agree often, not always), no prompt and a prompt, caps of
    1, 7 and the 16 x ids limit: codes and stop reasons as plain decoding gives them."""
    path = make_vallex_checkpoint(tmp_path / "m.pt", d_model=128, n_heads=4, n_layers=3, seed=seed, eos_bias=0.5)
    model = VallEX.from_checkpoint(path, n_heads=4)
    totals = {"drafted": 0, "accepted": 0}
    for k, frames in enumerate((0, 30)):
        args = _inputs(seed * 10 + k, 3, frames, model.config["n_text"])
        for s in (Sampling(top_k=1), Sampling(top_k=1, max_frames=1), Sampling(top_k=1, max_frames=7)):
            fast, plain, st = _both(model, monkeypatch, args, s)
            assert torch.equal(fast.codes, plain.codes), (frames, s)
            assert fast.stop_reason == plain.stop_reason
            for key in totals:
                totals[key] += st[key]
    assert totals["drafted"] > 0 and 0 < totals["accepted"] <= totals["drafted"]


def test_a_useless_draft_changes_nothing_and_is_dropped(golden, monkeypatch):
    """Draft weights made random: nearly every draft is rejected, the codes are still plain
    decoding's, and the draft length falls to plain steps (with a probe now and then)."""
    model = _golden_model(golden, "tiny-a")
    g = torch.Generator().manual_seed(0)
    for layer in model.core.ar.draft.layers:
        for name in ("qkv", "out", "ff1", "ff2"):
            w = getattr(layer, name).w
            w.copy_(torch.randint(-127, 128, w.shape, generator=g, dtype=torch.int8))
    c = json.loads((golden / "model" / "tiny-a" / "cases.json").read_text())
    c = max(c, key=lambda c: len(c["ar_codes"]))
    args = (torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"]), int(c["prompt_text_len"]),
            torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8))
    fast, plain, st = _both(model, monkeypatch, args, Sampling(top_k=1))
    assert fast.codes[:, 0].tolist() == c["ar_codes"] == plain.codes[:, 0].tolist()
    assert st["accepted"] <= st["drafted"] // 2
    assert st["rounds"] > 2 * st["drafted"] // 3  # mostly plain steps by the end


def test_sampling_and_batches_are_never_drafted(golden):
    model = _golden_model(golden, "tiny-a")
    c = json.loads((golden / "model" / "tiny-a" / "cases.json").read_text())[0]
    args = (torch.tensor(c["text_ids"]), torch.tensor(c["text_langs"]), int(c["prompt_text_len"]),
            torch.tensor(c["prompt_codes"], dtype=torch.long).reshape(-1, 8))
    model.core.ar.draft.stats = {"rounds": 0, "drafted": 0, "accepted": 0}
    model.generate(*args, sampling=Sampling(top_k=20, seed=4))
    model.generate_batch([LMRequest(*args)] * 2, Sampling(top_k=1))
    assert model.core.ar.draft.stats["rounds"] == 0


def test_draft_length_follows_acceptance_and_costs():
    costs = speculate._Costs()
    assert costs.best_length(0) == 0  # no room: a plain step
    costs.saw(2, 2, 0.010, 0.025, 3)
    costs.saw(0, 0, 0.0, 0.021, 1)
    for _ in range(10):
        costs.saw(4, 4, 0.020, 0.030, 5)
    assert costs.best_length(100) >= 4  # drafts that always pass: long runs
    assert costs.best_length(2) == 2  # never past the room left
    for _ in range(20):
        costs.saw(3, 0, 0.015, 0.028, 4)
    assert costs.best_length(100) in (0, 1)  # drafts that always fail: plain steps (a probe at most)
