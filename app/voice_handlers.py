"""Voices tab handlers: save, list, preview, rename, delete, import, export, use."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import gradio as gr

from app import format as fmt
from app.gate import Gate
from app.handlers import Prompt
from app.inputs import user_errors

# Deleting cannot be undone, and the list pre-selects a voice: the page asks before it deletes.
# The browser's own dialog, run before the handler; "Cancel" sends None, nothing picked sends "".
CONFIRM_DELETE_JS = """(name) => {
  if (!name) { return ""; }
  return window.confirm(`Delete the voice '${name}'? This cannot be undone.`) ? name : null;
}"""

PREVIEW_TEXT = {
    "en": "Hello! This is how I sound in the studio.",
    "zh": "你好！这是我在工作室里的声音。",
    "ja": "こんにちは！これがスタジオでの私の声です。",
}


class VoiceHandlers:
    """Events of the Voices tab over `studio.voices` (a `core.voices.VoiceLibrary`)."""

    def __init__(self, studio, gate: Gate):
        self.studio = studio
        self.gate = gate

    def _listing(self, selected: str | None = None, pick_first: bool = True):
        """-> (table rows, dropdown update). After a delete nothing is picked (`pick_first=False`),
        so a second press of Delete cannot remove the next voice in the list."""
        voices = self.studio.voices.list()
        names = [v.name for v in voices]
        if selected not in names:
            selected = names[0] if names and pick_first else None
        return fmt.voice_rows(voices), gr.update(choices=names, value=selected)

    @user_errors
    def list_voices(self):
        """-> (table rows, dropdown update)."""
        return self._listing()

    @user_errors
    def refresh_voices(self, selected: str | None = None):
        """The list read again (the Voices tab opened), keeping the voice picked if it is still there."""
        return self._listing(selected)

    @user_errors
    def save_voice(self, prompt: Prompt | None, name: str, transcript: str | None = None):
        """Save the prompt being cloned under `name` -> (rows, dropdown)."""
        if prompt is None:
            raise gr.Error("Record or upload a prompt in the Clone & speak tab first "
                           "(and press 'Check prompt').")
        name = (name or "").strip()
        if not name:
            raise gr.Error("Type a name for the voice.")
        voice = prompt.voice
        transcript = (transcript or "").strip()
        if transcript and transcript != voice.transcript:  # the box was edited: save what it says
            if prompt.audio is None:  # a saved voice in use: no recording to remake it from
                voice = self.studio.with_transcript(voice, transcript)
            else:
                with self.gate.turn(bounded=False):
                    voice, _ = self.studio.make_voice(prompt.audio[1], sample_rate=prompt.audio[0],
                                                      transcript=transcript)
        self.studio.voices.save(dataclasses.replace(voice, name=name), overwrite=False)
        gr.Info(f"Saved voice '{name}'.")
        return self._listing(name)

    @user_errors
    def use_voice(self, name: str):
        """Load a saved voice as the current prompt -> (Prompt state, transcript, message, prompt
        audio cleared so that Speak uses this voice, prompt report, chosen window cleared)."""
        voice = self.studio.voices.load(self._name(name))
        using = f"Using saved voice **{voice.name}** - go to Clone & speak and press Speak."
        # the Clone & speak tab's report and window were the recording's: they go with it
        return Prompt(None, voice), voice.transcript, using, None, using, None

    @user_errors
    def preview_voice(self, name: str):
        """A short sentence in the voice -> (sr, int16)."""
        voice = self.studio.voices.load(self._name(name))
        from core.synth import SynthOptions

        text = PREVIEW_TEXT.get(voice.language, PREVIEW_TEXT["en"])
        with self.gate.turn(bounded=False):
            result = self.studio.synthesize(text, voice=voice, options=SynthOptions(seed=0))
        return result.sample_rate, fmt.to_int16(result.audio)

    @user_errors
    def rename_voice(self, name: str, new_name: str):
        new_name = (new_name or "").strip()
        if not new_name:
            raise gr.Error("Type the new name.")
        voice = self.studio.voices.rename(self._name(name), new_name)
        same = voice.name == name
        gr.Info(f"'{name}' has that name already." if same else f"Renamed '{name}' to '{voice.name}'.")
        return self._listing(voice.name)

    @user_errors
    def delete_voice(self, name: str | None):
        """Delete the picked voice. On the page Delete asks first (CONFIRM_DELETE_JS): None is its
        "Cancel" (nothing picked arrives as "")."""
        if name is None:
            gr.Info("Nothing was deleted.")
            return gr.skip(), gr.skip()
        self.studio.voices.delete(self._name(name))
        gr.Info(f"Deleted voice '{name}'.")
        return self._listing(pick_first=False)

    @user_errors
    def import_voice(self, file, name: str | None = None):
        if not file:
            raise gr.Error("Choose a reference .npz file to import.")
        path = file if isinstance(file, str) else file.name
        name = (name or "").strip() or None
        voice = self.studio.voices.import_npz(path, name)
        gr.Info(f"Imported voice '{voice.name}'.")
        return self._listing(voice.name)

    @user_errors
    def export_voice(self, name: str) -> str:
        """-> path of a copy of the voice's reference `.npz` (a temp file Gradio may serve)."""
        name = self._name(name)
        src = self.studio.voices.export_npz(name)
        dest = Path(tempfile.mkdtemp(prefix="vallex-voice-")) / f"{name}.npz"
        shutil.copyfile(src, dest)
        return str(dest)

    @staticmethod
    def _name(name: str | None) -> str:
        if not name:
            raise gr.Error("Pick a saved voice first (save one from the Clone & speak tab).")
        return name
