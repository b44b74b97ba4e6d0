"""UI event handlers: one short method per event - validate, call the Studio, format.

Per-user data travels in `gr.State` (the prompt being cloned, the last result, the Stop request
of the take being made); the only per-user thing kept here is a weak map from a visit to its
take, so that closing the tab stops it. Every handler is wrapped in `app.inputs.user_errors`: a
`StudioError` becomes a `gr.Error` carrying its `user_message()`, any other failure a short
message (the traceback goes to the log).
"""
from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from app import format as fmt
from app.gate import Gate
from app.inputs import (make_options, message_of, parse_seed, require_audio, same_audio, user_errors,
                        write_temp)
from app.takes import TakeControl, stop_when_cancelled  # noqa: F401 (re-exported)
from core.errors import Stopped, StudioError

log = logging.getLogger("vallex.ui")

# One take on the page: ~20k characters is about half an hour of speech. A pasted book would be
# phonemized for minutes before its first sentence; the CLI's batch mode is made for that.
MAX_TEXT_CHARS = 20_000
TAKE_KINDS = ("speak", "translate")  # the events Stop (and closing the tab) applies to, one of each per visit


@dataclass
class Prompt:
    """The prompt a user is cloning from (kept in gr.State): the recording and the voice made."""

    audio: tuple[int, np.ndarray] | None
    voice: Any  # core.voices.Voice
    report: Any = None  # core.audio.PromptReport


def _progress_reporter(progress, said: list | None = None):
    """core's progress(fraction, message) -> Gradio's progress bar (and the messages into `said`)."""
    def report(fraction: float, message: str) -> None:
        progress(fraction, desc=message)
        if said is not None:
            said.append(message)
    return report


class Handlers:
    """Binds the events of `app.ui.build_ui` to one Studio shared by all users."""

    def __init__(self, studio, gate: Gate):
        self.studio = studio
        self.gate = gate
        # a visit (Gradio session) -> its TakeControl, held by the session's gr.State; weak, so
        # that an ended session leaves nothing behind here
        self._takes: weakref.WeakValueDictionary[str, TakeControl] = weakref.WeakValueDictionary()

    # --- status -----------------------------------------------------------------------------
    def notice(self) -> str:
        """Markdown saying which weights are missing (empty when all are there)."""
        from core.store import missing_models, models_folder

        try:
            folder = models_folder(self.studio.models_dir)
            notice = fmt.missing_notice(missing_models(self.studio.models_dir), folder)
        except StudioError as e:
            return f"### ⚠️ {e.user_message()}"
        damaged = self.studio.status().get("load_errors") or []
        if damaged:  # on disk, but a file could not be loaded: every take would fail until it is replaced
            notice = "\n\n".join(["### ⚠️ Model weights damaged", *damaged,
                                    "(From the last try to load them: the next take tries again.)"]
                                   + ([notice] if notice else []))
        return notice

    # --- clone & speak ----------------------------------------------------------------------
    @user_errors
    def check_prompt(self, audio, language: str | None = None, transcript: str | None = None,
                     progress=gr.Progress()):
        """Prompt audio (+ optional transcript; empty = ASR) -> (report markdown, chosen window,
        transcript, Prompt state). A refused recording is said in the report too, then the event
        fails: the toast fades, and an empty report beside the clip would not say it was refused."""
        try:
            yield self._check_prompt(audio, language, transcript, progress)
        except Exception as e:
            yield f"⚠️ {message_of(e)}", gr.skip(), gr.skip(), gr.skip()
            raise

    def _check_prompt(self, audio, language, transcript, progress):
        sr, wav = require_audio(audio)
        if not (transcript or "").strip() and "asr" in (self.studio.status().get("missing") or []):
            return self._report_without_asr(sr, wav)
        progress(0.0, desc=self._loading_message())
        lang = None if language in (None, "", "auto", "auto-mix", "mix") else language
        with self.gate.turn(bounded=False):
            voice, report = self.studio.make_voice(wav, sample_rate=sr, language=lang,
                                                   transcript=(transcript or "").strip() or None)
        window = (report.sample_rate, fmt.to_int16(report.wav))
        return fmt.report_markdown(report), window, voice.transcript, Prompt((sr, wav), voice, report)

    def _report_without_asr(self, sr: int, wav):
        """No Whisper to write the transcript: the recording is still checked (level, window), and
        the user is asked to type what it says; the voice is made when they do."""
        from core.audio import SAMPLE_RATE, check_prompt, load_mono

        report = check_prompt(load_mono(wav, SAMPLE_RATE, sample_rate=sr), SAMPLE_RATE)
        report.advice.append("Type what the recording says in the transcript box, then press Check prompt "
                             "(no speech recognition is installed to write it).")
        gr.Info("Type what the recording says in the transcript box (speech recognition is not installed).")
        window = (report.sample_rate, fmt.to_int16(report.wav))
        return fmt.report_markdown(report), window, "", None

    def _voice_for(self, audio, prompt: Prompt | None, transcript: str) -> Prompt | None:
        """The prompt to clone: the state's, remade if the recording changed since it was
        checked or the user edited the transcript (empty transcript = ASR). None = no prompt."""
        transcript = (transcript or "").strip()
        audio = require_audio(audio) if audio is not None else None
        if audio is not None and (prompt is None or not same_audio(audio, prompt.audio)):
            sr, wav = audio
            voice, report = self.studio.make_voice(wav, sample_rate=sr, transcript=transcript or None)
            return Prompt((sr, wav), voice, report)
        if prompt is not None and transcript and transcript != prompt.voice.transcript:
            if prompt.audio is None:  # a saved voice: no recording here, its codes stay
                return Prompt(None, self.studio.with_transcript(prompt.voice, transcript))
            sr, wav = prompt.audio
            voice, report = self.studio.make_voice(wav, sample_rate=sr, transcript=transcript)
            return Prompt((sr, wav), voice, report)
        return prompt

    def preset_values(self, preset: str | None = None):
        """The knobs a preset sets -> (top-k (0 = off), top-p, temperature, repetition window, best of)."""
        from core.synth import PRESETS

        p = PRESETS.get(preset or "balanced") or PRESETS.get("balanced") or {}
        return (p.get("top_k") or 0, p.get("top_p"), p.get("temperature"),
                p.get("repetition_window"), p.get("best_of"))

    @user_errors
    def parse_instruction(self, text: str) -> str:
        from core.convert import parse_instruction

        return fmt.plan_markdown(parse_instruction(text or ""))

    @user_errors
    def speak(self, text, audio=None, prompt=None, transcript=None, language=None, accent=None,
              preset=None, top_k=None, top_p=None, temperature=None, rep_window=None, best_of=None,
              seed=None, speed=None, instruction=None, long_mode=None, instruction_mode=None,
              control=None, progress=gr.Progress(), request: gr.Request = None):
        """Stream sentence audio as it is made, then the whole take, the table and the state.
        Stop (`control`) ends the take early: what was made is still put together.

        Yields (stream chunk, full audio, sentence rows, result state, info markdown,
        prompt state, transcript)."""
        control = control if control is not None else TakeControl()
        self._track(control, request)
        if control.stopped_in_queue():  # what the user asked for: a note, not an error on every output
            gr.Info("The take was stopped before it started. Press Speak to make it.")
            yield (gr.skip(),) * 7
            return
        with control.take():
            if not (text or "").strip():
                raise gr.Error("Type the text to speak first.")
            if len(text) > MAX_TEXT_CHARS:
                raise gr.Error(f"The text has {len(text):,} characters; one take on this page holds at most "
                               f"{MAX_TEXT_CHARS:,} (about half an hour of speech). Split it into parts, or make a "
                               "book with the command line: `python launch.py synth --in-dir FOLDER --out-dir OUT`.")
            options = make_options(language, accent, preset, top_k, top_p, temperature, rep_window,
                                   best_of, seed, speed, instruction, long_mode, instruction_mode)
            said = []  # core's progress messages ("sentence 3/40"), for the notes under the players
            report = _progress_reporter(progress, said)
            report(0.0, self._loading_message())
            try:
                # The gate is held per step, not across yields: a listener who goes away mid-stream
                # cannot keep the models locked, and other users' requests interleave fairly.
                with self.gate.turn(bounded=False):  # a refused recording leaves the last take as it was
                    prompt = self._voice_for(audio, prompt, transcript)
                # the last take leaves the page now: its audio and rows beside the new one's would mislead
                yield gr.skip(), None, [], None, "Making a new take…", gr.skip(), gr.skip()
                yield from self._take(text, prompt, options, control, report, said)
            except Exception as e:
                # the toast goes away after a while: the notes, which said "Making a new take…" (or
                # described the last take), keep why
                yield (gr.skip(),) * 4 + (f"⚠️ {message_of(e)}", gr.skip(), gr.skip())
                raise

    def _take(self, text, prompt, options, control, report, said):
        """Speak's take once its prompt is ready: each sentence as it is made, then the whole take."""
        voice = prompt.voice if prompt is not None else None
        t0, made = time.perf_counter(), []
        stream = self.studio.stream(text, voice=voice, options=options, progress=report,
                                    stop=lambda: control.stop)
        while True:
            with self.gate.turn(bounded=False):
                sent = next(stream, None)
            if sent is None:
                break
            made.append(sent)
            # what the notes say while the take is made (the progress bar alone is easy to miss)
            note = f"Making a new take: {said[-1] if said else f'sentence {len(made)}'} done. " \
                   "**Stop** ends it here, keeping the sentences made so far."
            chunk = (self.studio.sample_rate, fmt.to_int16(sent.audio)) if len(sent.audio) else gr.skip()
            yield (chunk,) + (gr.skip(),) * 3 + (note, gr.skip(), gr.skip())
        if not made:  # Stop came while the prompt was being checked
            gr.Info("Stopped before the first sentence was made. Press Speak to start again.")
            yield (gr.skip(),) * 4 + ("Stopped before the first sentence was made.", gr.skip(), gr.skip())
            return
        with self.gate.turn(bounded=False):
            result = self.studio.assemble(made, options=options)
        seconds = fmt.generation_seconds(t0, time.perf_counter(), self.studio.ready_at)
        transcript = voice.transcript if voice is not None else gr.skip()
        yield self._result_outputs(result, stream_chunk=gr.skip(), seconds=seconds) + (prompt, transcript)

    def queue_take(self, control=None, request: gr.Request = None) -> None:
        """Speak's first step, before the take waits for its turn: from now on Stop (and closing
        the tab) applies to it."""
        self._queue(control, request, "speak")

    def queue_translation(self, control=None, request: gr.Request = None) -> None:
        """Translate's first step: as `queue_take`."""
        self._queue(control, request, "translate")

    def _queue(self, control: TakeControl | None, request, kind: str) -> None:
        if control is not None and not control.running:
            control.queued, control.stop = True, False
            self._track(control, request, kind)

    def _track(self, control: TakeControl, request, kind: str = "speak") -> None:
        if request is not None and getattr(request, "session_hash", None):
            self._takes[f"{request.session_hash}/{kind}"] = control

    def leave(self, request: gr.Request = None) -> None:
        """The visitor closed or reloaded the tab: their take (made for nobody now) stops at once,
        and frees the studio for the others. (Gradio would otherwise drop it only at its next
        sentence, after a whole batch.)"""
        visit = getattr(request, "session_hash", None) or ""
        for kind in TAKE_KINDS:
            control = self._takes.pop(f"{visit}/{kind}", None)
            if control is not None and control.busy():
                log.info("a visitor left during a take (%s): stopping it", kind)
                control.stop = True

    def stop(self, control=None) -> None:
        """Stop button: a take waiting for its turn never starts; the take being made ends at once
        (the sentences finished by then become the whole take)."""
        if control is None or not control.busy():
            gr.Info("Nothing is being made right now.")
            return
        control.stop = True
        if control.running:
            gr.Info("Stopping now: the sentences finished so far are kept.")
        else:
            gr.Info("Stopped: what was waiting for its turn will not start.")

    def _loading_message(self) -> str:
        """What the first call is waiting for: loading, or downloading missing weights."""
        status = self.studio.status()
        if status.get("loaded"):
            return "starting"
        missing = status.get("missing") or []
        if isinstance(missing, list) and set(missing) - {"asr"}:
            return f"downloading missing weights ({', '.join(missing)}), then loading"
        return "loading the models (first use)"

    def _result_outputs(self, result, stream_chunk, seconds: float | None = None):
        path = write_temp(result.audio, result.sample_rate, "wav", "vallex-speech")
        info = fmt.take_markdown(result, seconds, str(self.studio.device), self.studio.dtype)
        return stream_chunk, path, fmt.sentence_rows(result), result, info

    @user_errors
    def reroll(self, result, index=None, seed=None, control=None, request: gr.Request = None):
        """Make one sentence again (new seed unless given) -> same outputs as `speak` (its first
        five). Stop (`control`, the take's) applies as to a take; a stopped re-roll changes nothing."""
        control = control if control is not None else TakeControl()
        self._track(control, request)
        if control.stopped_in_queue():
            gr.Info("The re-roll was stopped before it started; the take is unchanged.")
            return (gr.skip(),) * 5
        with control.take():
            if result is None:
                raise gr.Error("Generate something first, then re-roll one of its sentences.")
            n = len(result.sentences)
            try:
                i = float(index)
            except (TypeError, ValueError):
                i = -1.0
            if not (i.is_integer() and 1 <= i <= n):  # the page counts from 1, Studio.reroll from 0
                given = "" if index is None else f", not {index!r}"  # None: the box was left empty
                raise gr.Error(f"Pick a sentence number from 1 to {n} (the # column){given}."
                               if n > 1 else "This take has one sentence: its number is 1.")
            i -= 1
            t0 = time.perf_counter()
            try:
                with self.gate.turn(bounded=False):
                    new = self.studio.reroll(result, int(i), seed=parse_seed(seed), stop=lambda: control.stop)
            except Stopped:
                gr.Info("The re-roll was stopped; the take is unchanged.")
                return (gr.skip(),) * 5
        outputs = self._result_outputs(new, stream_chunk=None)
        made = new.sentences[int(i)]
        note = f"Re-rolled sentence {int(i) + 1} (seed {made.seed}) in {time.perf_counter() - t0:.1f} s."
        return outputs[:4] + ("\n\n".join(filter(None, [note, outputs[4]])),)

    # --- convert / translate ------------------------------------------------------------------
    @user_errors
    def convert(self, audio, instruction: str | None = None):
        sr, wav = require_audio(audio, "a clip")
        if not (instruction or "").strip():
            raise gr.Error('Type an instruction first, e.g. "deeper and slower".')
        with self.gate.turn(bounded=False):
            out, plan = self.studio.convert(wav, sr, instruction)
        return (sr, fmt.to_int16(out)), fmt.plan_markdown(plan)

    @user_errors
    def translate(self, audio, control=None, progress=gr.Progress(), request: gr.Request = None):
        """Speech in en/zh/ja -> (the same voice speaking the English translation, text).
        Stop (`control`): as in `speak`; a translation stopped midway keeps its finished sentences."""
        control = control if control is not None else TakeControl()
        self._track(control, request, "translate")
        if control.stopped_in_queue():
            gr.Info("The translation was stopped before it started. Press Translate to make it.")
            return gr.skip(), gr.skip()
        with control.take():
            sr, wav = require_audio(audio, "a clip")
            report = _progress_reporter(progress)
            report(0.0, self._loading_message())
            try:
                with self.gate.turn(bounded=False):
                    result = self.studio.translate(wav, sample_rate=sr, progress=report,
                                                   stop=lambda: control.stop)
            except Stopped:
                gr.Info("Stopped before the first sentence was made. Press Translate to start again.")
                return gr.skip(), gr.skip()
        english = " ".join(s.text for s in result.sentences)
        heard = [w for w in result.warnings if w.startswith("heard")]
        stopped = [w.capitalize() for w in result.warnings if w.startswith("stopped on request")]
        text = "\n".join(heard + [f"English: {english}"] + stopped)
        return (result.sample_rate, fmt.to_int16(result.audio)), text
