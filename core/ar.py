"""The AR half of VALL-E X: tokens -> codebook-0 codes, one frame per step.

The prefix is [text ; BOS + prompt codebook 0] (text rows see only text, audio rows all text and
earlier audio), prefilled into a static KV cache; then one row per request (or per beam) takes
one token a step, until EOS or the reference's cap of 16 frames per text id. Batches are left-
padded and masked, and the fused native step (core/kernels/decode_step.c) takes a map of live rows
so a finished row leaves the computation at once. Sampling and its guards are core/sampling.py.
"""
from __future__ import annotations

import logging

import torch

from core import speculate
from core.errors import raise_if_stopped
from core.lm_io import Req
from core.sampling import EOS, Sampling, TokenPicker
from core.transformer import embed, head_logits

log = logging.getLogger(__name__)

BOS = 1025  # AR audio embedding row used as BOS
LENGTH_CAP = 16  # reference: at most 16 frames per text id (total text)


def decode_ar(model, reqs: list[Req], s: Sampling, seeds: list[int] | None = None, stop=None) -> list[dict]:
    """Codebook-0 codes for a batch of prepared requests (`model` is a core.lm.VallEX): one dict
    per request with "codes" (EOS stripped), "stop_reason", "warnings" and "seed". stop()
    is asked before each step (True raises core.errors.Stopped).

    The prompt is prefilled (left-padded, masked), then one token per live row per step; best-of-N
    runs N rows per request and keeps the reference's length-normalised log-prob winner."""
    c, stack, dev = model.core, model.core.ar, model.device
    nb = 1 if s.greedy else s.best_of  # rows per request
    R = len(reqs) * nb
    if seeds is None:  # request i samples with seed + i, as generate_batch gives them
        base = s.seed if s.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        seeds = [base + i for i in range(len(reqs))]
    caps = _frame_caps(reqs, s)
    pre = [r.L + 1 + r.T for r in reqs]  # prefix length: text, BOS, prompt frames
    P = max(pre)
    max_cap = max(cp for cp, _ in caps)
    S_max = P + max_cap
    cache = torch.empty(len(stack.layers), 2, R, stack.h, S_max, stack.cache_row, dtype=stack.kv_dtype, device=dev)
    logits = _prefill(model, reqs, cache, nb, pre)
    key_valid, key_start = _pad_masks(pre, nb, S_max, dev)

    pickers = [TokenPicker(s, seeds[i // nb] if nb == 1 else _beam_seed(seeds[i // nb], i % nb), dev)
               for i in range(R)]
    row_req = [i // nb for i in range(R)]
    done = [False] * R
    reasons = [""] * R
    fused = stack.fused_decode(cache, R)
    row_map = torch.arange(R, dtype=torch.int32) if fused and R > 1 else None
    tok_io = model.token_io(max(r.T for r in reqs) + max_cap + 1) if fused else None
    if R == 1 and s.greedy and fused and speculate.available(stack):
        # one sequence, greedy: drafted in int8, verified by the exact step (the same codes)
        reasons[0] = speculate.decode(model, reqs[0], pickers[0], caps[0], cache, logits, P, tok_io, stop)
        return [_result(reqs[0], pickers, reasons, seeds[0], s)]
    live_rows = list(range(R))
    slot = P
    feed = [BOS] * R
    while True:
        raise_if_stopped(stop)
        greedy_toks = logits.argmax(-1).tolist() if nb == 1 and s.greedy else None
        for j, i in enumerate(live_rows):
            if done[i]:
                continue
            pk = pickers[i]
            tok = pk.pick(logits[j], greedy_toks[j] if greedy_toks is not None else None)
            if tok == EOS:
                done[i] = True
                reasons[i] = pk.stop_reason or "eos"
                continue
            feed[i] = tok
            cap, why = caps[row_req[i]]
            if len(pk.history) >= cap:
                done[i] = True
                reasons[i] = why
        if all(done):
            break
        # Drop finished rows from the computation: at once where the fused step takes a map of
        # live rows into the cache (nothing is copied), else once a quarter of the batch is
        # done (the cache is compacted, a copy of it).
        n_dead = sum(done[i] for i in live_rows)
        if n_dead and (row_map is not None or n_dead * 4 >= len(live_rows)):
            keep = [j for j, i in enumerate(live_rows) if not done[i]]
            kt = torch.tensor(keep, device=dev)
            if row_map is not None:
                row_map = row_map.index_select(0, kt)
            else:
                cache = cache.index_select(2, kt)
            live_rows = [live_rows[j] for j in keep]
            if key_valid is not None:
                key_valid = key_valid.index_select(0, kt)
                key_start = key_start.index_select(0, kt)
        codes = [feed[i] for i in live_rows]
        positions = [reqs[row_req[i]].T + len(pickers[i].history) for i in live_rows]
        if tok_io is not None:  # the whole step, codes to logits, in one native call
            logits = stack.decode_step.logits(tok_io, codes, positions, cache, slot, key_start, row_map)
        else:
            toks, pos = torch.tensor(codes, device=dev), torch.tensor(positions, device=dev)
            xs = (embed(c.ar_audio_emb, toks) * 1.0 + c.ar_audio_alpha * model.positions(max(positions) + 1)[pos])
            m = None if key_valid is None else key_valid[:, None, None, :slot + 1]
            h = stack.forward_cached(xs.unsqueeze(1), cache, slot, m, key_start, row_map)
            logits = head_logits(c.ar_head, h[:, -1])
        slot += 1
    return [_result(r, pickers[b * nb:(b + 1) * nb], reasons[b * nb:(b + 1) * nb], seeds[b], s)
            for b, r in enumerate(reqs)]


def _frame_caps(reqs: list[Req], s: Sampling) -> list[tuple[int, str]]:
    """Per request: the most frames it may take, and the stop reason when it gets there (the
    reference's 16 per text id, or the caller's smaller max_frames)."""
    caps = []
    for r in reqs:
        cap = LENGTH_CAP * r.L
        caps.append((min(cap, s.max_frames), "max_frames") if s.max_frames and s.max_frames < cap else (cap, "limit"))
    return caps


def _prefill(model, reqs: list[Req], cache: torch.Tensor, nb: int, pre: list[int]) -> torch.Tensor:
    """Run [text ; BOS + prompt codebook 0] through the AR, left-padded to the longest, filling
    the cache's first max(pre) slots; the next-token logits [rows, V] (each request's nb rows)."""
    c, stack, dev = model.core, model.core.ar, model.device
    B, P = len(reqs), max(pre)
    x = torch.zeros(B, P, c.d, device=dev)
    for b, r in enumerate(reqs):
        a_ids = torch.cat([torch.tensor([BOS], device=dev), r.prompt[:, 0]])
        xa = embed(c.ar_audio_emb, a_ids) * 1.0 + c.ar_audio_alpha * model.positions(r.T + 1)
        x[b, P - pre[b]:] = torch.cat([model.text_input(r, nar=False), xa])
    pcache = cache[:, :, 0::nb] if nb > 1 else cache
    if B > 1 and (stack.decode_step is not None or dev.type == "cpu"):
        # Each request prefilled unpadded, in its own slice of the cache. The fused decode step
        # (int8, bf16) is batch-invariant (every row is quantized, summed and attended on its
        # own), so a batch then gives exactly the one-by-one tokens. On a CPU the prefill is
        # bound by arithmetic, and one padded batch spent ~25% more on its pad rows and masks
        # than these separate passes (fp32, 10 sentences: 5.1 s against 4.1 s). No step attends
        # to the pad slots (key_start, masks); they are zeroed all the same, so that no path can
        # ever meet uninitialised memory there.
        for b in range(B):
            pcache[:, :, b, :, :P - pre[b]] = 0
        h = torch.cat([stack.forward_cached(x[b:b + 1, P - pre[b]:], pcache[:, :, b:b + 1, :, P - pre[b]:], 0,
                                            prefix_mask([r.L], [pre[b]], pre[b], dev), prefix=r.L)
                       for b, r in enumerate(reqs)])
    else:
        uniform = len(set(pre)) == 1 and len({r.L for r in reqs}) == 1
        h = stack.forward_cached(x, pcache, 0, prefix_mask([r.L for r in reqs], pre, P, dev),
                                 prefix=reqs[0].L if uniform else None)
    logits = head_logits(c.ar_head, h[:, -1])
    if nb > 1:  # every beam starts from its request's prefix
        for beam in range(1, nb):
            cache[:, :, beam::nb, :, :P] = cache[:, :, 0::nb, :, :P]
        logits = logits.repeat_interleave(nb, 0)
    return logits


def _pad_masks(pre: list[int], nb: int, S_max: int, dev) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """For a left-padded batch: which cache slots each row may attend to ([rows, S_max] bool) and
    where its keys start ([rows] int32); (None, None) when no row is padded."""
    P = max(pre)
    if all(p == P for p in pre):
        return None, None
    rows = len(pre) * nb
    key_valid = torch.ones(rows, S_max, dtype=torch.bool, device=dev)
    for b, p in enumerate(pre):
        key_valid[b * nb:(b + 1) * nb, :P - p] = False
    key_start = torch.tensor([P - pre[i // nb] for i in range(rows)], dtype=torch.int32, device=dev)
    return key_valid, key_start


def _result(r: Req, pickers: list[TokenPicker], stops: list[str], seed: int, s: Sampling) -> dict:
    """One request's outcome from its rows: the only row, or the reference's best-of choice (the
    highest sum of log-probs normalised by length ** length_penalty)."""
    best = 0
    if len(pickers) > 1:
        scores = [pk.sum_logprob / (r.T + 1 + len(pk.history)) ** s.length_penalty for pk in pickers]
        best = max(range(len(pickers)), key=lambda k: scores[k])
    pk = pickers[best]
    for w in pk.warnings:
        log.warning(w)
    return {"codes": list(pk.history), "stop_reason": stops[best], "warnings": list(pk.warnings), "seed": seed}


def _beam_seed(seed: int, beam: int) -> int:
    return (seed * 1_000_003 + beam * 7_919) % (2**63 - 1) if beam else seed


def prefix_mask(text_lens: list[int], pre: list[int], P: int, dev) -> torch.Tensor:
    """Bool [B or 1, 1, P, P] (True = attend) for the AR prefix, left-padded to P.
    Text rows see all text and no audio; audio rows see all text and earlier audio; pad rows
    see only themselves (keeps them finite)."""
    idx = torch.arange(P, device=dev)
    masks = []
    uniq = {}
    for L, p in zip(text_lens, pre):
        key = (L, p)
        if key not in uniq:
            off = P - p
            is_pad = idx < off
            is_text = (idx >= off) & (idx < off + L)
            is_audio = idx >= off + L
            q, k = idx[:, None], idx[None, :]
            m = (is_text[:, None] & is_text[None, :]) | \
                (is_audio[:, None] & (is_text[None, :] | (is_audio[None, :] & (k <= q))))
            m |= is_pad[:, None] & (k == q)
            uniq[key] = m
        masks.append(uniq[key])
    if len(uniq) == 1:
        return masks[0][None, None]
    return torch.stack(masks)[:, None]
