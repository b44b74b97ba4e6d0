"""Sentences -> audio: a group of `longform.Request`s through the codec LM (one batch when the
seeds allow it), Vocos, the speed change and the output-side instruction.

A failure loses only its sentence: a failed batch is retried one sentence at a time, and a
decode or effects failure becomes that sentence's error result. A sampled sentence that stopped at
once (no audio) is drawn again with fresh seeds. `core.errors.Stopped` always goes through.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from core.audio import SAMPLE_RATE
from core.convert import apply_plan, change_speed
from core.errors import Stopped, StudioError
from core.longform import Request, new_seed
from core.synth_types import Job, SentenceResult, SynthOptions

log = logging.getLogger(__name__)

REROLLS = 3  # fresh draws for a sampled sentence that stopped at once (SentenceMaker._reroll_if_silent)


class SentenceMaker:
    """Makes the sentences of a take; `load()` gives the loaded models (core.models), `lock` keeps
    the LM to one generation at a time (it holds a static KV cache)."""

    def __init__(self, load: Callable, lock: threading.Lock):
        self._load, self._engine_lock = load, lock

    def make(self, reqs: list[Request], job: Job, stop=None) -> list[SentenceResult]:
        """Generate `reqs` (one batch when the engine can), decode and post-process each.
        A failed batch is retried one sentence at a time, so one bad sentence loses only itself.
        stop(): as in `Studio.synthesize` (core.errors.Stopped goes through)."""
        m = self._load()
        t0 = time.perf_counter()
        try:
            gens = self._engine(m.lm, reqs, job.options, stop)
        except Stopped:
            raise
        except Exception as e:  # noqa: BLE001 - turned into per-sentence results below
            if len(reqs) == 1:
                log.warning("sentence %d failed: %s", reqs[0].index, e)
                return [self._failed(reqs[0], e, job)]
            log.warning("batch of %d failed (%s); retrying one by one", len(reqs), e)
            return [r for req in reqs for r in self.make([req], job, stop)]
        gens = [self._reroll_if_silent(m.lm, req, gen, job, stop) for req, gen in zip(reqs, gens)]
        share = (time.perf_counter() - t0) / len(reqs)  # a batch's engine time, split evenly
        out = []
        for req, gen in zip(reqs, gens):
            try:
                out.append(self._finish(req, gen, job, share))
            except Exception as e:  # noqa: BLE001 - a decode/effects failure loses this sentence only
                log.warning("sentence %d failed after generation: %s", req.index, e)
                out.append(self._failed(req, e, job))
        return out

    def _reroll_if_silent(self, lm, req: Request, gen, job: Job, stop=None, tries: int = REROLLS):
        """A sampled sentence that stopped at once (EOS on the first step: no audio) is drawn again
        with fresh seeds, up to `tries` times, where the seed was the studio's to choose: a seed the
        user typed must give the same result every time, and greedy decoding would only repeat
        itself. The seed kept is the one reported, so the result can be reproduced."""
        if len(gen.codes) or gen.stop_reason != "eos" or req.seed_given:
            return gen
        if job.options.sampling(req.seed).greedy:
            return gen
        for _ in range(tries):
            seed = new_seed()
            try:
                with self._engine_lock:
                    again = lm.generate(**req.engine_args(), sampling=job.options.sampling(seed, req.max_frames()),
                                        stop=stop)
            except Stopped:
                raise
            except Exception as e:  # noqa: BLE001 - the silent take stands (and says so); nothing is lost
                log.warning("sentence %d: drawing again after a silent take failed: %s", req.index, e)
                return gen
            if len(again.codes):
                again.warnings.append(f"the model stopped at once with seed {gen.seed}; drew again with seed {again.seed}")
                return again
        return gen

    def _engine(self, lm, reqs: list[Request], options: SynthOptions, stop=None) -> list:
        """Engine call. A batch samples request i with seed `seed + i`, so a group of sentences
        with consecutive seeds gives the same tokens as generating them one by one. stop(): as in
        VallEX.generate_batch (core.errors.Stopped is raised)."""
        seeds = [r.seed for r in reqs]
        with self._engine_lock:
            if len(reqs) > 1 and seeds == list(range(seeds[0], seeds[0] + len(reqs))):
                from core.lm import LMRequest

                sampling = options.sampling(seeds[0], max(r.max_frames() for r in reqs))
                return lm.generate_batch([LMRequest(**r.engine_args()) for r in reqs], sampling, stop=stop)
            return [lm.generate(**r.engine_args(), sampling=options.sampling(r.seed, r.max_frames()), stop=stop)
                    for r in reqs]

    def _finish(self, req: Request, gen, job: Job, engine_s: float = 0.0) -> SentenceResult:
        import torch

        codes = np.asarray(gen.codes.cpu() if hasattr(gen.codes, "cpu") else gen.codes, dtype=np.int64)
        codes = codes.reshape(-1, 8)
        wav = self._load().vocos.decode(torch.from_numpy(codes)).numpy() if len(codes) else np.zeros(0, np.float32)
        warnings = list(req.warnings) + list(getattr(gen, "warnings", []) or [])
        if len(codes) == 0:
            warnings.append("the model produced no audio for this sentence; try a re-roll")
        elif gen.stop_reason in ("max_frames", "limit"):  # it never said "done": the end may be missing
            cap = "the length cap" if gen.stop_reason == "max_frames" else "the model's length limit for its text"
            warnings.append(f"stopped at {cap} after {len(codes) / 75:.1f} s, before the sentence ended: its end "
                            "may be cut off; try a re-roll, or split the sentence")
        t0 = time.perf_counter()
        audio = self.post(wav, job)
        timings = {"engine_s": round(engine_s, 4), "post_s": round(time.perf_counter() - t0, 4)}
        return SentenceResult(req.index, req.text, audio, codes, int(getattr(gen, "seed", req.seed)),
                              str(gen.stop_reason), warnings, req.phonemes, True, timings, context=job)

    def _failed(self, req: Request, err: Exception, job: Job) -> SentenceResult:
        msg = err.user_message() if isinstance(err, StudioError) else f"{type(err).__name__}: {err}"
        return SentenceResult(req.index, req.text, np.zeros(0, np.float32), np.zeros((0, 8), np.int64), req.seed,
                              "error", [f"generation failed: {msg}"], req.phonemes, False, context=job)

    def post(self, wav: np.ndarray, job: Job) -> np.ndarray:
        """Speed, then the output-side instruction (DSP)."""
        wav = np.asarray(wav, dtype=np.float32)
        if wav.size and job.options.speed != 1.0:
            wav = change_speed(wav, SAMPLE_RATE, job.options.speed)
        if wav.size and job.output_plan is not None and not job.output_plan.is_empty():
            wav = apply_plan(wav, SAMPLE_RATE, job.output_plan)
        return wav
