"""The NAR half of VALL-E X: codebook-0 codes -> all 8 codebooks.

Seven full (unmasked) passes over [text ; prompt ; generated frames], one per codebook 1..7, each
with its stage's AdaLN and head; the prompt rows carry the sum of all 8 of their codebook
embeddings (as the reference does), the generated rows the sum of the codebooks predicted so far.
Only the generated rows' logits are needed, so the last layer computes only those (keep_from).
"""
from __future__ import annotations

import torch

from core.checkpoint import N_CODES
from core.errors import VoiceError, raise_if_stopped
from core.lm_io import Req
from core.transformer import embed, head_logits


def decode_nar(model, reqs: list[Req], ars: list[torch.Tensor], stop=None) -> list[torch.Tensor]:
    """All 8 codebooks [N, 8] per request (`model` is a core.lm.VallEX), column 0 = its AR codes:
    7 full passes, each adding the codebook just predicted to the audio rows' embeddings.
    stop() is asked before each pass (True raises core.errors.Stopped)."""
    c, stack, dev = model.core, model.core.nar, model.device
    if dev.type == "cpu" and len(reqs) > 1:
        # The NAR passes are compute-bound on a CPU: a batch saves nothing and its padding and
        # bigger working set cost ~25%. One request at a time (same tokens either way).
        return [decode_nar(model, [r], [a], stop)[0] for r, a in zip(reqs, ars)]
    for r, a in zip(reqs, ars):
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= N_CODES):
            raise VoiceError(f"ar_codes out of range 0..{N_CODES - 1}")
    outs: list[torch.Tensor | None] = [None] * len(reqs)
    work = [k for k, a in enumerate(ars) if a.numel() > 0]
    for k, a in enumerate(ars):
        if a.numel() == 0:
            outs[k] = torch.zeros(0, c.n_q, dtype=torch.long, device=dev)
    if not work:
        return outs
    rs = [reqs[k] for k in work]
    gens = [ars[k].long() for k in work]
    lens = [r.L + r.T + g.numel() for r, g in zip(rs, gens)]
    starts = [r.L + r.T for r in rs]
    S = max(lens)
    B = len(rs)
    keep_from = min(starts)
    mask = None
    if any(n != S for n in lens):
        kv = torch.zeros(B, S, dtype=torch.bool, device=dev)
        for b, n in enumerate(lens):
            kv[b, :n] = True
        mask = kv[:, None, None, :]
    texts = [model.text_input(r, nar=True) for r in rs]
    y_embs = []
    for r, g in zip(rs, gens):
        y = embed(c.nar_audio_embs[0], torch.cat([r.prompt[:, 0], g]))
        for j in range(1, c.n_q):
            if r.T:
                y[:r.T] += embed(c.nar_audio_embs[j], r.prompt[:, j])
        y_embs.append(y)
    codes = [[g] for g in gens]
    x = torch.zeros(B, S, c.d, device=dev)
    for i in range(c.n_q - 1):
        raise_if_stopped(stop)
        for b, (r, y) in enumerate(zip(rs, y_embs)):
            x[b, :r.L] = texts[b]
            x[b, r.L:lens[b]] = y * 1.0 + c.nar_audio_alpha * model.positions(y.shape[0])
        h = stack.forward_full(x, i, mask, keep_from=keep_from)
        for b, (r, g) in enumerate(zip(rs, gens)):
            hb = h[b, starts[b] - keep_from: lens[b] - keep_from]
            pred = head_logits(c.nar_heads[i], hb).argmax(-1)
            codes[b].append(pred)
            if i < c.n_q - 2:
                y_embs[b][r.T:] += embed(c.nar_audio_embs[i + 1], pred)
    for k, cs in zip(work, codes):
        outs[k] = torch.stack(cs, dim=-1)
    return outs
