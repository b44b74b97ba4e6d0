"""What the page's handlers share: turning errors into messages, reading its input boxes (audio,
seed, sampling knobs) and handing audio back as files Gradio may serve."""
from __future__ import annotations

import functools
import inspect
import logging
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from core.errors import StudioError

log = logging.getLogger("vallex.ui")


def message_of(e: Exception) -> str:
    """What the page says about a failed action: a refusal's own message, or a short note for
    anything else (the traceback goes to the log)."""
    if isinstance(e, gr.Error):
        return str(e.message)
    if isinstance(e, StudioError):
        return e.user_message()
    return (f"Something went wrong inside the studio ({type(e).__name__}: {e}). "
            "The server log has the details.")


def user_errors(fn):
    """Show `StudioError`s as their user message and hide tracebacks of anything else."""

    def convert(e: Exception) -> gr.Error:
        # The user sees the message in a toast; the log keeps it too, so that an operator (or a
        # failing browser test) can tell what the page showed.
        # A refusal is one log line, not Gradio's traceback (that is kept for real failures).
        if isinstance(e, (gr.Error, StudioError)):
            log.warning("%s refused: %s", fn.__name__, message_of(e))
            if isinstance(e, gr.Error):
                e.print_exception = False
                return e
            return gr.Error(message_of(e), print_exception=False)
        log.exception("handler %s failed", fn.__name__)
        return gr.Error(message_of(e))

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise convert(e) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise convert(e) from e
    return wrapper


def require_audio(audio, what: str = "a prompt") -> tuple[int, np.ndarray]:
    """A gr.Audio value (a file path, or Gradio's (sr, array)) -> (sr, float32 [N, C] or array)."""
    if audio is None:
        raise gr.Error(f"Record or upload {what} first.")
    if isinstance(audio, (str, Path)):
        # The page hands over the uploaded file (type="filepath"): core.audio decodes it, with its
        # size/length limits checked before decoding and a clear AudioError for damaged files.
        from core.audio import load_audio

        wav, sr = load_audio(audio)
        return int(sr), wav
    sr, wav = audio
    if wav is None or len(wav) == 0:
        raise gr.Error(f"The recording is empty: record or upload {what} again.")
    return int(sr), np.asarray(wav)


def write_temp(wav: np.ndarray, sr: int, fmt_name: str = "wav", stem: str = "vallex") -> str:
    """Encode audio into a temp file Gradio may serve; returns its path."""
    from core.audio import encode_audio

    folder = Path(tempfile.mkdtemp(prefix="vallex-"))
    path = folder / f"{stem}.{fmt_name}"
    path.write_bytes(encode_audio(wav, sr, fmt_name))
    return str(path)


def same_audio(a, b) -> bool:
    """Are two Gradio (sr, array) tuples the same recording?"""
    if a is None or b is None:
        return a is b
    return int(a[0]) == int(b[0]) and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))


def parse_seed(seed) -> int | None:
    """A seed from a text box or an API number: empty -> None (random)."""
    if seed is None or str(seed).strip() == "":
        return None
    try:
        return int(str(seed).strip())
    except ValueError:
        raise gr.Error(f"The seed must be a whole number, not {str(seed)[:20]!r} (or empty for random).") from None


def make_options(language, accent, preset, top_k, top_p, temperature, rep_window, best_of, seed,
                 speed, instruction, long_mode, instruction_mode=None):
    """UI values -> `SynthOptions`; empty advanced fields mean "the preset's value"."""
    from core.synth import SynthOptions

    def opt(v, cast, name):
        if v is None or str(v).strip() == "":
            return None
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = None
        if number is None or (cast is int and not number.is_integer()):
            kind = "a whole number" if cast is int else "a number"
            raise gr.Error(f"{name} must be {kind}, not {str(v)[:20]!r} (or empty for the preset's value).")
        return cast(number)

    speed = opt(speed, float, "speed")
    return SynthOptions(
        language=language or "auto-mix", accent=accent or "keep", preset=preset or "balanced",
        top_k=opt(top_k, int, "top_k"), top_p=opt(top_p, float, "top_p"),
        temperature=opt(temperature, float, "temperature"),
        repetition_window=opt(rep_window, int, "repetition window"), best_of=opt(best_of, int, "best of"),
        seed=parse_seed(seed), speed=1.0 if speed is None else speed, instruction=instruction or "",
        prompt_mode=long_mode or "fixed", instruction_mode=instruction_mode or "dsp",
    )
