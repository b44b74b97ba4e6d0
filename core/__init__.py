"""VALL-E X Studio core: text -> phonemes -> tokens -> codes -> audio.

The small public surface the app, the CLI and users need. Names are imported on first use, so
`import core.text` does not pull in torch, and a broken optional piece cannot break the rest.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Studio": "core.synth",
    "SynthOptions": "core.synth_types",
    "SynthResult": "core.synth_types",
    "SentenceResult": "core.synth_types",
    "Voice": "core.voices",
    "VoiceLibrary": "core.voices",
    "load_audio": "core.audio",
    "load_mono": "core.audio",
    "encode_audio": "core.audio",
    "check_prompt": "core.audio",
    "SAMPLE_RATE": "core.audio",
    "phonemize": "core.text",
    "parse_instruction": "core.convert",
    "apply_plan": "core.convert",
    "resolve_models": "core.store",
    "missing_models": "core.store",
    "download_model": "core.store",
    "StudioError": "core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value
