"""Bundled voice presets (presets/voices): the reference's files, unchanged, read-only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.errors import VoiceError
from core.voices import PRESETS_DIR, Voice, VoiceLibrary

EXPECTED = {  # name: (language, frames, text length), from the golden README
    "acou_1": ("en", 225, 58), "en2zh_tts_1": ("en", 663, 142), "paimon": ("zh", 198, 38),
    "babara": ("zh", 162, 46), "alan": ("ja", 749, 160), "cafe": ("ja", 331, 59),
}


def test_presets_are_the_reference_files(golden):
    for name in EXPECTED:
        assert (PRESETS_DIR / f"{name}.npz").read_bytes() == (golden / "presets" / f"{name}.npz").read_bytes()
    licence = (PRESETS_DIR / "LICENSE.md").read_text()
    assert "MIT" in licence and "Copyright (c) 2023 Songting" in licence


def test_presets_listed_with_user_voices(tmp_path):
    lib = VoiceLibrary(tmp_path / "voices")
    lib.save(Voice("mine", np.zeros((10, 8), np.int64), [1, 2, 3], "en"))
    listed = lib.list()
    assert listed[0].name == "mine" and not listed[0].preset
    presets = {v.name: v for v in listed if v.preset}
    assert set(presets) == set(EXPECTED)
    for name, (lang, frames, text_len) in EXPECTED.items():
        v = presets[name]
        assert (v.language, v.audio_tokens.shape, len(v.text_ids)) == (lang, (frames, 8), text_len)
        assert v.audio_tokens.dtype == np.int64 and v.audio_tokens.max() < 1024


def test_presets_are_read_only_and_exportable(tmp_path):
    lib = VoiceLibrary(tmp_path / "voices")
    with pytest.raises(VoiceError, match="preset"):
        lib.delete("alan")
    with pytest.raises(VoiceError, match="preset"):
        lib.rename("alan", "bob")
    assert lib.export_npz("alan") == PRESETS_DIR / "alan.npz"
    copy = lib.load("alan")
    copy.name = "my alan"
    lib.save(copy)  # a saved copy is a user voice
    assert not lib.load("my alan").preset and lib.load("alan").preset
    assert (Path(PRESETS_DIR) / "alan.npz").exists()
