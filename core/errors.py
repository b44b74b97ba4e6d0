"""User-facing errors. Every layer raises these (never a bare traceback for bad input).

A `StudioError` carries what was wrong (`str(err)`) and what to do about it (`err.hint`). They
subclass ValueError so the public APIs that promise "ValueError on bad input" keep that promise.
The UI, the HTTP API and the CLI show `err.user_message()`.
"""
from __future__ import annotations

import re


class StudioError(ValueError):
    """Base class: a problem the user can fix. `hint` says how."""

    code = "bad_input"  # machine-readable kind, used by the HTTP API

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def user_message(self) -> str:
        """The message as a sentence (core's messages may start lower-case, as exceptions do;
        a leading identifier such as `text_ids` or `--voice` keeps its case), then the hint."""
        message = self.message
        if re.match(r"[a-z]+[ ,:]", message):
            message = message[0].upper() + message[1:]
        if not self.hint:
            return message
        ends = "" if message.rstrip().endswith((".", "!", "?")) else "."
        return f"{message}{ends} {self.hint}"


class AudioError(StudioError):
    code = "bad_audio"


class TextError(StudioError):
    code = "bad_text"


class VoiceError(StudioError):
    code = "bad_voice"


class CheckpointError(StudioError):
    """A model file is missing keys, has wrong shapes, is pickled or is not a checkpoint."""

    code = "bad_checkpoint"


class ModelMissingError(StudioError):
    """Weights are not on disk and cannot be downloaded now (offline, no network)."""

    code = "model_missing"


class DownloadError(StudioError):
    code = "download_failed"


class BusyError(StudioError):
    """The request queue is full; try again shortly."""

    code = "busy"


class Stopped(StudioError):
    """A generation was stopped on request (its `stop` callable said so) before it finished."""

    code = "stopped"


def check_stop(stop) -> None:
    """Where a `stop` comes in (once, not per step): None or a callable."""
    if stop is not None and not callable(stop):
        raise StudioError(f"stop must be a callable that returns True to stop (or None), not {type(stop).__name__}.",
                          "Pass a function, e.g. a threading.Event's is_set.")


def raise_if_stopped(stop) -> None:
    """The engine's loops call this between steps: `stop` is None or a callable (True = stop now)."""
    if stop is not None and stop():
        raise Stopped("The generation was stopped on request.")


def loading(fn, what: str):
    """Run a loader; anything but a StudioError becomes one clear StudioError naming `what`."""
    try:
        return fn()
    except StudioError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as e:
        raise StudioError(f"Could not load {what}: {type(e).__name__}: {str(e)[:300]}",
                          "Check the models folder (python launch.py download) and the device setting.") from e
