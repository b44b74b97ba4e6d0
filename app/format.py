"""Turning core results into what the page shows: markdown, table rows, int16 audio."""
from __future__ import annotations

import numpy as np


def to_int16(wav: np.ndarray) -> np.ndarray:
    """float32 [N] in [-1, 1] -> int16 [N] (what gr.Audio streams and plays without rescaling)."""
    return (np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def _size(n: int | None) -> str:
    if not n:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def missing_notice(missing: list, folder=None) -> str:
    """Markdown for `core.store.missing_models` items: what is missing, how big, how to get it."""
    required = [m for m in missing if not getattr(m, "optional", False)]
    optional = [m for m in missing if getattr(m, "optional", False)]
    if not missing:
        return ""
    lines = []
    if required:
        total = sum(m.size_bytes or 0 for m in required)
        lines += [f"### ⚠️ Model weights missing: {', '.join(m.name for m in required)} "
                  f"({_size(total)} in all)",
                  "The page works, but speaking and cloning need these files. Download them with "
                  "`python launch.py download` (or the command on each row), or put the files in the "
                  "folder shown; models load on first use, no restart needed."]
    else:
        lines += ["#### Optional model missing",
                  "Cloning and speaking work: type the prompt's transcript yourself. The Translate tab "
                  "needs speech recognition."]
    lines += ["", "| model | size | files | folder | command |", "|---|---|---|---|---|"]
    for m in required + optional:
        tag = " (optional)" if getattr(m, "optional", False) else ""
        lines.append(f"| {getattr(m, 'title', m.name)}{tag} | {_size(m.size_bytes)} | "
                     f"{m.repo}: `{m.filename}` | `{m.folder}` | `{m.command}` |")
    if folder is not None:
        lines += ["", f"Models folder: `{folder}`"]
    return "\n".join(lines)


def report_markdown(report) -> str:
    """A `PromptReport` as a short checklist."""
    mark = "✓ Good prompt" if report.ok else "⚠️ This prompt may clone poorly"
    lines = [
        f"**{mark}** - using {report.start_s:.2f}-{report.end_s:.2f} s "
        f"({report.end_s - report.start_s:.1f} s) of {report.duration:.1f} s",
        f"- level {report.level_db:.1f} dB, peak {report.peak:.2f}, "
        f"clipping {100 * report.clipping:.2f} %, SNR ≈ {report.snr_db:.0f} dB",
    ]
    lines += [f"- {a}" for a in report.advice]
    return "\n".join(lines)


def plan_markdown(plan) -> str:
    """An `EditPlan` as one line: what will be done, clamps, words not understood."""
    return f"**Plan:** {plan.describe()}" if plan is not None else ""


def generation_seconds(started: float, ended: float, models_ready: float | None) -> float | None:
    """A take's generation time (perf_counter seconds): from when it started or the models became
    ready, whichever came later, so a first take that waited for the models to load (its own load,
    or the server's background one) is not counted as slow. None when nothing is left to time."""
    seconds = ended - max(started, models_ready if models_ready is not None else started)
    return seconds if seconds > 0 else None


def take_markdown(result, seconds: float | None = None, device: str = "cpu", dtype: str = "fp32") -> str:
    """The take's notes: how fast it was made (when `seconds`, the generation's wall time, is
    known), a hint where a faster precision exists, then its warnings."""
    parts = []
    audio_s = len(result.audio) / result.sample_rate
    if seconds and audio_s:
        rtf = seconds / audio_s
        parts.append(f"Made {audio_s:.1f} s of speech in {seconds:.1f} s (RTF {rtf:.2f}; {device}, {dtype}).")
        if device == "cpu" and dtype in ("fp32", "bf16") and rtf > 1.5:
            parts.append("Faster on a CPU: restart with `--dtype int8` (several times faster, close to "
                         "fp32) or `--dtype int4` (the fastest, on CPUs with AVX-512 VNNI); fp32 is the "
                         "reference-exact mode.")
    if result.warnings:
        parts.append("\n".join(f"- {w}" for w in result.warnings))
    return "\n\n".join(parts)


def take_line(result) -> str:
    """One line for a terminal: how long the take is, how fast it was made, how to remake it."""
    audio_s = len(result.audio) / result.sample_rate
    total = (result.timings or {}).get("total_s")
    made = f" in {total:.1f} s" if total else ""
    seeds = [s.seed for s in result.sentences if s.ok]
    again = f"; --seed {seeds[0]} makes it again" if seeds else ""
    return f"{audio_s:.1f} s of speech{made}{again}"


SENTENCE_HEADERS = ["#", "sentence", "sec", "seed", "stop", "notes"]


def sentence_rows(result) -> list[list]:
    """One table row per `SentenceResult` in a `SynthResult`."""
    rows = []
    for s in result.sentences:
        secs = len(s.audio) / result.sample_rate
        # numbered from 1, as the notes ("sentence 2: ...") and the re-roll box count
        rows.append([s.index + 1, s.text, round(secs, 2), s.seed, s.stop_reason, "; ".join(s.warnings)])
    return rows


VOICE_HEADERS = ["name", "language", "seconds", "transcript", "created", "kind"]


def voice_rows(voices: list) -> list[list]:
    """`core.voices.Voice` metadata -> table rows (bundled presets are marked read-only)."""
    return [[v.name, v.language, round(v.duration_s, 1), v.transcript, str(v.created)[:19].replace("T", " "),
             "bundled (read-only)" if getattr(v, "preset", False) else "yours"] for v in voices]
