"""The page: `build_ui(studio) -> gr.Blocks`. Nothing is built at import.

Tabs: Clone & speak, Voices, Convert, Translate. Every action is a named API endpoint
(`api_name`), so `gradio_client` can do whatever the page does. Events that use the models share
one concurrency slot (`concurrency_id="studio"`): the Gradio queue lines them up.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app.format import SENTENCE_HEADERS, VOICE_HEADERS
from app.gate import Gate
from app.handlers import Handlers
from app.takes import TakeControl, stop_when_cancelled
from app.voice_handlers import CONFIRM_DELETE_JS, VoiceHandlers
from core.instruction_words import MAX_INSTRUCTION_CHARS
from core.presets import preset_names

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LANGUAGES = [("auto (mixed languages)", "auto-mix"), ("auto (one language)", "auto"),
             ("English", "en"), ("Chinese", "zh"), ("Japanese", "ja"), ("mix (tagged)", "mix")]
ACCENTS = [("native", "keep"), ("English", "en"), ("Chinese", "zh"),
           ("Japanese", "ja")]
STUDIO = {"concurrency_id": "studio", "concurrency_limit": 1}
PRIVATE = {"api_visibility": "private"}


def css() -> str:
    path = ASSETS / "studio.css"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def build_ui(studio, gate: Gate | None = None) -> gr.Blocks:
    """The whole page over one `core.synth.Studio`; `gate` serialises model use with /v1."""
    gate = gate or Gate()
    h, vh = Handlers(studio, gate), VoiceHandlers(studio, gate)
    with gr.Blocks(title="VALL-E X Studio") as demo:
        prompt_state = gr.State(None)   # app.handlers.Prompt of this user
        result_state = gr.State(None)   # core.synth.SynthResult of this user's last take
        take_state = gr.State(TakeControl())  # this user's take in progress (the Stop button)
        gr.Markdown("# VALL-E X Studio\nClone a voice from a few seconds of speech, "
                    "then make it say anything in English, Chinese or Japanese.",
                    elem_id="title")
        notice = gr.Markdown(h.notice(), elem_id="notice", label="notice")
        with gr.Tabs():
            with gr.Tab("Clone & speak", id="clone"):
                c = _clone_tab()
            with gr.Tab("Voices", id="voices") as voices_tab:
                v = _voices_tab()
            with gr.Tab("Convert", id="convert"):
                cv = _convert_tab()
            with gr.Tab("Translate", id="translate"):
                tr = _translate_tab()
        _wire_clone(h, c, prompt_state, result_state, take_state)
        _wire_voices(vh, v, c, prompt_state)
        # voices saved, renamed or deleted in another tab or window since this page was opened
        voices_tab.select(vh.refresh_voices, v.pick, [v.table, v.pick], queue=False, **PRIVATE)
        cv.btn.click(h.convert, [cv.audio, cv.instruction], [cv.out, cv.plan], api_name="convert",
                     **STUDIO)
        cv.instruction.change(h.parse_instruction, cv.instruction, cv.plan, queue=False, **PRIVATE)
        translate_state = gr.State(TakeControl())  # this user's translation in progress
        tr.btn.click(h.queue_translation, translate_state, None, queue=False, **PRIVATE).then(
            stop_when_cancelled(h.translate), [tr.audio, translate_state], [tr.out, tr.text],
            api_name="translate", **STUDIO)
        tr.stop.click(h.stop, translate_state, None, api_name="stop_translation")
        demo.load(h.notice, None, notice, api_name="status", queue=False)
        demo.load(h.preset_values, c.preset, [c.top_k, c.top_p, c.temperature, c.rep_window,
                                              c.best_of], queue=False, **PRIVATE)
        demo.load(vh.list_voices, None, [v.table, v.pick], api_name="list_voices", queue=False)
        demo.unload(h.leave)
        gr.Timer(10).tick(h.notice, None, notice, queue=False, show_progress="hidden", **PRIVATE)
    return demo


def _clone_tab() -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Row():
        with gr.Column(scale=1):
            c.audio = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="prompt_audio",
                               label="Voice prompt: 3-10 s of clear speech")
            c.prompt_lang = gr.Dropdown([("auto", "auto"), ("English", "en"), ("Chinese", "zh"),
                                         ("Japanese", "ja")], value="auto", label="Prompt language")
            c.check = gr.Button("Check prompt", elem_id="check_btn")
            c.report = gr.Markdown(elem_id="prompt_report", label="prompt report")
            c.window = gr.Audio(label="Chosen window (what the model hears)", interactive=False,
                                elem_id="prompt_window")
            c.transcript = gr.Textbox(label="Transcript of the prompt (filled by ASR, editable)",
                                      lines=2, elem_id="transcript")
        with gr.Column(scale=2):
            c.text = gr.Textbox(label="Text to speak", lines=5, elem_id="text",
                                placeholder="Type anything; long texts are split into sentences.")
            with gr.Row():
                c.language = gr.Dropdown(LANGUAGES, value="auto-mix", label="Language", scale=2)
                c.accent = gr.Dropdown(ACCENTS, value="keep", label="Accent")
                presets = preset_names() or ["balanced"]  # a broken file: the take's error says why
                c.preset = gr.Dropdown(presets, value="balanced" if "balanced" in presets else presets[0],
                                       label="Sampling preset")
                c.speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Speed")
            c.instruction = gr.Textbox(label="Instruction (optional)", elem_id="instruction",
                                       placeholder="e.g. deeper, a little slower, louder",
                                       max_length=MAX_INSTRUCTION_CHARS)
            c.instruction_mode = gr.Radio([("on the output (DSP)", "dsp"),
                                           ("on the voice prompt (the model imitates it)", "prompt")],
                                          value="dsp", label="Apply the instruction")
            c.plan = gr.Markdown(elem_id="plan", label="plan")
            with gr.Accordion("Advanced sampling (set by the preset; change to override)", open=False):
                with gr.Row():
                    # no minimum / maximum / precision here: Gradio's own refusal ("Value 100 is
                    # greater than maximum value 8.") does not say which box, and precision=0
                    # rounds 2.5 silently; core.synth.SynthOptions checks them and names the knob
                    c.top_k = gr.Number(None, label="top-k (0 = off)")
                    c.top_p = gr.Number(None, label="top-p (0-1]")
                    c.temperature = gr.Number(None, label="temperature")
                with gr.Row():
                    c.rep_window = gr.Number(None, label="repetition-aware window (0 = off)")
                    c.best_of = gr.Number(None, label="best of")
                    # a Textbox, not a Number: a Number shows and sends 0 when left empty
                    c.seed = gr.Textbox("", label="seed (empty = random)", placeholder="random",
                                        elem_id="seed")
                c.long_mode = gr.Radio(["fixed", "sliding"], value="fixed",
                                       label="Long text: prompt fixed, or sliding (last sentence)")
            with gr.Row():
                c.speak = gr.Button("Speak", variant="primary", elem_id="speak_btn", scale=4)
                c.stop = gr.Button("Stop", variant="stop", elem_id="stop_btn", scale=1)
            c.stream = gr.Audio(label="Live (plays while later sentences are made)", streaming=True,
                                autoplay=True, interactive=False, elem_id="stream_out")
            c.full = gr.Audio(label="Whole take", type="filepath", interactive=False,
                              elem_id="full_out")
            c.info = gr.Markdown(elem_id="speak_info", label="notes")
            c.sentences = gr.Dataframe(headers=SENTENCE_HEADERS, interactive=False, wrap=True,
                                       label="Sentences", elem_id="sentences",
                                       column_widths=["5%", "42%", "9%", "13%", "7%", "24%"])
            with gr.Row():
                c.reroll_index = gr.Number(1, label="sentence #")
                c.reroll_seed = gr.Textbox("", label="seed (empty = a new one)", placeholder="new",
                                           elem_id="reroll_seed")
                c.reroll = gr.Button("Re-roll this sentence", elem_id="reroll_btn")
    return c


def _wire_clone(h: Handlers, c, prompt_state, result_state, take_state) -> None:
    check_out = [c.report, c.window, c.transcript, prompt_state]
    c.check.click(h.check_prompt, [c.audio, c.prompt_lang, c.transcript], check_out,
                  api_name="check_prompt", **STUDIO)
    # A new recording: forget the old prompt and transcript, then check it (ASR fills the text).
    reset_out = [prompt_state, c.transcript, c.report, c.window]
    for event in (c.audio.upload, c.audio.stop_recording):
        event(_reset, None, reset_out, queue=False, **PRIVATE).then(
            h.check_prompt, [c.audio, c.prompt_lang], check_out, **STUDIO, **PRIVATE)
    c.audio.clear(_reset, None, reset_out, queue=False, **PRIVATE)
    c.instruction.change(h.parse_instruction, c.instruction, c.plan, api_name="parse_instruction",
                         queue=False, show_progress="hidden")
    take = [c.stream, c.full, c.sentences, result_state, c.info, prompt_state, c.transcript]
    # First, at once: the take is queued, so that Stop applies to it while it waits for its turn.
    speak_in = [c.text, c.audio, prompt_state, c.transcript, c.language, c.accent, c.preset, c.top_k, c.top_p,
                c.temperature, c.rep_window, c.best_of, c.seed, c.speed, c.instruction, c.long_mode,
                c.instruction_mode, take_state]
    c.speak.click(h.queue_take, take_state, None, queue=False, **PRIVATE).then(
        stop_when_cancelled(h.speak), speak_in, take, api_name="speak", **STUDIO)
    # Its own concurrency group, not the studio's: it must run while the take it stops holds that one.
    c.stop.click(h.stop, take_state, None, api_name="stop")
    knobs = [c.top_k, c.top_p, c.temperature, c.rep_window, c.best_of]
    c.preset.change(h.preset_values, c.preset, knobs, api_name="preset_values", queue=False)
    # a re-roll is the take's too: Stop and closing the tab apply to it
    c.reroll.click(h.queue_take, take_state, None, queue=False, **PRIVATE).then(
        stop_when_cancelled(h.reroll), [result_state, c.reroll_index, c.reroll_seed, take_state], take[:5],
        api_name="reroll", **STUDIO)


def _reset():
    return None, "", "", None


def _voices_tab() -> SimpleNamespace:
    v = SimpleNamespace()
    gr.Markdown("Save the prompt from **Clone & speak** as a named voice and reuse it later, "
                "or import a reference `.npz` prompt.")
    with gr.Row():
        v.name = gr.Textbox(label="Name for the current prompt", elem_id="voice_name", scale=3)
        v.save = gr.Button("Save current prompt as voice", elem_id="save_voice_btn", scale=1)
    v.table = gr.Dataframe(headers=VOICE_HEADERS, interactive=False, label="Saved voices",
                           elem_id="voices_table")
    with gr.Row():
        v.pick = gr.Dropdown([], label="Saved voice", elem_id="voice_pick", scale=3,
                             allow_custom_value=True)
        v.use = gr.Button("Use this voice", variant="primary", elem_id="use_voice_btn", scale=1)
        v.preview = gr.Button("Preview", elem_id="preview_voice_btn", scale=1)
        v.delete = gr.Button("Delete", variant="stop", elem_id="delete_voice_btn", scale=1)
    v.message = gr.Markdown(elem_id="voice_msg", label="message")
    v.preview_audio = gr.Audio(label="Preview", interactive=False, autoplay=True,
                               elem_id="preview_audio")
    with gr.Row():
        v.new_name = gr.Textbox(label="New name", scale=3)
        v.rename = gr.Button("Rename", scale=1)
    with gr.Row():
        v.import_file = gr.File(label="Reference prompt (.npz)", file_types=[".npz"], type="filepath")
        with gr.Column():
            v.import_name = gr.Textbox(label="Name (default: the file name)")
            v.import_btn = gr.Button("Import")
    with gr.Row():
        v.export = gr.Button("Export selected voice (.npz)")
        v.export_file = gr.File(label="Exported voice", interactive=False)
    return v


def _wire_voices(vh: VoiceHandlers, v, c, prompt_state) -> None:
    listing = [v.table, v.pick]
    v.save.click(vh.save_voice, [prompt_state, v.name, c.transcript], listing,
                 api_name="save_voice", **STUDIO)
    v.use.click(vh.use_voice, v.pick, [prompt_state, c.transcript, v.message, c.audio, c.report, c.window],
                api_name="use_voice")
    v.preview.click(vh.preview_voice, v.pick, v.preview_audio, api_name="preview_voice", **STUDIO)
    v.rename.click(vh.rename_voice, [v.pick, v.new_name], listing, api_name="rename_voice")
    v.delete.click(vh.delete_voice, v.pick, listing, api_name="delete_voice", js=CONFIRM_DELETE_JS)
    v.import_btn.click(vh.import_voice, [v.import_file, v.import_name], listing,
                       api_name="import_voice")
    v.export.click(vh.export_voice, v.pick, v.export_file, api_name="export_voice")


def _convert_tab() -> SimpleNamespace:
    cv = SimpleNamespace()
    gr.Markdown("Change any recording with words: *deeper*, *higher by 3 semitones*, *faster*, "
                "*louder*, *robot*, *echo*...")
    with gr.Row():
        with gr.Column():
            cv.audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Clip",
                                elem_id="convert_in")
            cv.instruction = gr.Textbox(label="Instruction", elem_id="convert_instruction",
                                        max_length=MAX_INSTRUCTION_CHARS)
            cv.plan = gr.Markdown(elem_id="convert_plan", label="plan")
            cv.btn = gr.Button("Convert", variant="primary", elem_id="convert_btn")
        cv.out = gr.Audio(label="Converted", interactive=False, elem_id="convert_out")
    return cv


def _translate_tab() -> SimpleNamespace:
    tr = SimpleNamespace()
    gr.Markdown("Speak in Chinese or Japanese (or English) and hear yourself say it in English.")
    with gr.Row():
        with gr.Column():
            tr.audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="You",
                                elem_id="translate_in")
            with gr.Row():
                tr.btn = gr.Button("Translate", variant="primary", elem_id="translate_btn", scale=4)
                tr.stop = gr.Button("Stop", variant="stop", elem_id="translate_stop_btn", scale=1)
        with gr.Column():
            tr.text = gr.Textbox(label="What was heard, and the English", lines=3, interactive=False, elem_id="translate_text")
            tr.out = gr.Audio(label="You, in English", interactive=False, elem_id="translate_out")
    return tr
