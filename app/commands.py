"""CLI subcommands: `synth` (batch, resumable), `record`, `say`, `download`."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from app.batch import Job, batch_jobs, remove_stale_parts, write_atomic
from core.errors import AudioError, StudioError, VoiceError

log = logging.getLogger("vallex.cli")


def run(args: argparse.Namespace) -> int:
    return {"synth": synth, "record": record, "say": say, "download": download}[args.command](args)


# --- synth -------------------------------------------------------------------------------------
@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def options_from(args: argparse.Namespace):
    from core.synth import SynthOptions

    # checked now (a too-long instruction too): said once, before any model loads, not for every file
    return SynthOptions(language=args.language, accent=args.accent, preset=args.preset,
                        seed=args.seed, speed=args.speed, instruction=args.instruction)


_WHAT = {"text_file": "the text file to read", "in_dir": "the folder of .txt files to read",
         "out_dir": "the folder the audio files go to", "out": "the file to save the take in (or leave it out "
         "to only play it)", "prompt": "the recording to clone (or leave it out for a voice the model makes up)"}


def check_not_empty(args: argparse.Namespace, *names: str) -> None:
    """An option given as "" (`--out-dir "$DIR"` with DIR unset) is refused: read as a path it is
    ".", the current folder (written into, or read from), and --prompt "" would make up a voice."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            option = "--" + name.replace("_", "-")
            raise StudioError(f"{option} is empty.", f"Give {option} {_WHAT[name]}.")


def voice_from(args: argparse.Namespace, studio):
    """--voice NAME (saved) or --prompt AUDIO [--transcript] -> Voice, or None."""
    if args.transcript and not args.prompt:
        raise StudioError("--transcript is what is said in --prompt, and no --prompt was given.",
                          "Add --prompt AUDIO, or leave --transcript out (a saved --voice has its own).")
    if args.voice is not None and not args.voice.strip():  # e.g. --voice "$VOICE" with VOICE unset
        raise StudioError("--voice is empty.", "Name a saved voice (the page's Voices tab lists them), or "
                          "leave --voice out for a voice the model makes up.")
    if args.voice:
        if not studio.voices.exists(args.voice):  # (a name with '/' or '..' is refused here too)
            names = [v.name for v in studio.voices.list()]
            listed = ", ".join(names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
            raise VoiceError(f"No saved voice called {args.voice!r}.",
                             (f"The voices are: {listed}. " if names else "There are no voices yet. ")
                             + "Or clone a recording with --prompt AUDIO, or leave --voice out.")
        return studio.voices.load(args.voice)
    if args.prompt:
        from core.audio import load_audio

        wav, sr = load_audio(args.prompt)
        voice, report = studio.make_voice(wav, sample_rate=sr, transcript=args.transcript)
        for advice in report.advice:
            log.warning("prompt: %s", advice)
        return voice
    return None


def synth(args: argparse.Namespace) -> int:
    from app.cli import make_studio

    check_not_empty(args, "text_file", "in_dir", "out_dir", "prompt")
    batch = batch_jobs(args)
    jobs = batch.jobs
    out_dir = Path(args.out_dir)
    try:  # before any model loads: a wrong --out-dir is known at once
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        why = "it is a file" if out_dir.is_file() else (e.strerror or str(e))
        raise StudioError(f"Cannot write into --out-dir {out_dir}: {why}.",
                          "Give a folder you can write to (it is made if missing).") from None
    if remove_stale_parts(out_dir, {j.out.name for j in jobs}):
        log.info("removed the temp files an interrupted run left in %s", out_dir)
    todo = [j for j in jobs if args.overwrite or not j.out.exists()]
    summary = Summary(skipped=len(jobs) - len(todo), failed=list(batch.unreadable))
    for path, msg in batch.unreadable:
        log.error("%s", msg)
    if summary.skipped:
        log.info("resuming: %d of %d outputs already exist (use --overwrite to redo them)",
                 summary.skipped, len(jobs))
    options = options_from(args)  # a bad --speed, --seed or --instruction is said before any model loads
    studio = make_studio(args)
    voice = voice_from(args, studio) if todo else None
    start = time.perf_counter()
    try:
        _synth_jobs(studio, todo, voice, options, args.format, summary, _again(args))
    except KeyboardInterrupt:  # the files made are complete (written atomically): say how to go on
        print(f"\nsynth: interrupted after {summary.done} made ({summary.seconds:.1f} s of audio) -> "
              f"{args.out_dir}; {_again(args)} to make the rest.", file=sys.stderr)
        return 130
    took = time.perf_counter() - start
    print(f"synth: {summary.done} made ({summary.seconds:.1f} s of audio in {took:.1f} s), "
          f"{summary.skipped} already done, {len(summary.failed)} failed"
          + (f", {len(batch.empty)} empty" if batch.empty else "") + f" -> {args.out_dir}")
    for out, msg in summary.failed:
        print(f"  failed {out.name}: {msg}")
    for path in batch.empty:
        print(f"  empty {path.name}: nothing to say, no file made")
    return 1 if summary.failed else 0


def _again(args: argparse.Namespace) -> str:
    """How to finish an interrupted batch: the same command, less --overwrite (which would redo
    the files already made)."""
    return ("run the same command again without --overwrite" if args.overwrite
            else "run the same command again")


def _synth_jobs(studio, todo: list[Job], voice, options, fmt: str, summary: Summary, again: str) -> None:
    """Make `todo` in order, counting into `summary`; a failed text is noted and skipped."""
    from tqdm import tqdm

    from core.audio import encode_audio

    for job in tqdm(todo, desc="synth", unit="utt", disable=None):
        try:
            result = studio.synthesize(job.text, voice=voice, options=options)
        except StudioError as e:
            if e.code in ("model_missing", "bad_checkpoint", "download_failed"):
                raise  # every job would fail the same way
            summary.failed.append((job.out, e.user_message()))
            log.error("%s: %s", job.out.name, e.user_message())
            continue
        for w in result.warnings:
            log.warning("%s: %s", job.out.name, w)
        try:
            write_atomic(job.out, encode_audio(result.audio, result.sample_rate, fmt))
        except OSError as e:  # a full disk: every later file would fail the same way
            raise StudioError(f"Cannot write {job.out}: {e.strerror or e}.",
                              f"Free some space (or pick another --out-dir) and {again}: "
                              "the files already made are kept.") from None
        summary.done += 1
        summary.seconds += len(result.audio) / result.sample_rate


# --- record / say --------------------------------------------------------------------------------
def _sounddevice(kind: str):
    """The sounddevice module with a usable `kind` ("input"/"output") device, or AudioError."""
    hint = ("Plug in a microphone / speakers (or check the OS sound settings), or use the web page, "
            "which records and plays through the browser.")
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio library missing
        raise AudioError(f"No audio system available ({e}).", hint) from e
    try:
        sd.query_devices(kind=kind)
    except Exception as e:  # PortAudioError or ValueError when there is no such device
        raise AudioError(f"No audio {kind} device found on this machine.", hint) from e
    return sd


def record(args: argparse.Namespace) -> int:
    from core.audio import SAMPLE_RATE, check_output_path, save_audio

    if not 1 <= args.seconds <= 60:
        raise AudioError(f"Cannot record {args.seconds} s.", "Use --seconds between 1 and 60.")
    check_output_path(args.out)  # before the user speaks for nothing
    if args.transcript and args.save_voice is None:  # else it would be dropped without a word
        raise StudioError("--transcript goes with the voice that --save-voice makes, and no --save-voice was given.",
                          "Add --save-voice NAME, or leave --transcript out (the recording alone is just a file).")
    if args.save_voice is not None:  # the name too (an empty one is refused): never saved over a voice
        from core.voices import VoiceLibrary, check_name

        library = VoiceLibrary(args.voices)
        if library.exists(check_name(args.save_voice, new=True)):
            raise VoiceError(f"A voice called {args.save_voice.strip()!r} already exists.",
                             "Pick another --save-voice name, or delete the old voice first (the page's Voices tab).")
    sd = _sounddevice("input")
    print(f"Recording {args.seconds:.0f} s... speak now.")
    wav = sd.rec(int(args.seconds * SAMPLE_RATE), samplerate=SAMPLE_RATE, channels=1,
                 dtype="float32")
    sd.wait()
    save_audio(args.out, wav[:, 0], SAMPLE_RATE)
    print(f"Saved {args.out}")
    if args.save_voice:
        from app.cli import make_studio

        studio = make_studio(args)
        voice, report = studio.make_voice(wav[:, 0], sample_rate=SAMPLE_RATE,
                                          transcript=args.transcript, name=args.save_voice)
        for advice in report.advice:
            print(f"  prompt: {advice}")
        studio.voices.save(voice, overwrite=False)
        print(f"Saved voice '{args.save_voice}' ({voice.transcript!r})")
    return 0


@contextmanager
def ctrl_c_finishes():
    """Yields stop(): the first Ctrl-C stops the take at once, and the sentences finished by then
    are still saved or played; a second one quits without them. Off the main thread (where signals
    cannot be caught) Ctrl-C keeps its usual meaning."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked.is_set
        return

    def on_ctrl_c(signum, frame):
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()
        print("\nStopping now; the sentences finished are kept (Ctrl-C again quits without them).",
              file=sys.stderr, flush=True)

    before = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield asked.is_set
    finally:
        signal.signal(signal.SIGINT, before)


def _progress_line(fraction: float, message: str) -> None:
    """A long take's progress on stderr ("sentence 3/40"): a line each, or one line redrawn on a terminal."""
    if sys.stderr.isatty():
        print(f"\r{message} ", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def say(args: argparse.Namespace) -> int:
    from app.cli import make_studio
    from app.format import take_line

    from core.audio import check_output_path, save_audio

    check_not_empty(args, "out", "prompt")
    if args.out:
        check_output_path(args.out)  # a bad --out is said now, not after the take is made
    sd = None if args.out else _sounddevice("output")
    options = options_from(args)  # a bad --speed, --seed or --instruction is said before any model loads
    studio = make_studio(args)
    with ctrl_c_finishes() as stop:
        result = studio.synthesize(args.text, voice=voice_from(args, studio), options=options,
                                   progress=_progress_line, stop=stop)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.out:
        try:
            save_audio(args.out, result.audio, result.sample_rate)
        except AudioError as e:  # the place went away while the take was made: keep the take anyway
            kept = save_audio(Path(tempfile.mkdtemp(prefix="vallex-say-")) / f"take{Path(args.out).suffix}",
                              result.audio, result.sample_rate)
            print(f"error: {e.user_message()} The take is kept at {kept}.", file=sys.stderr)
            return 1
        print(f"Saved {args.out}: {take_line(result)}")
        try:
            sd = _sounddevice("output")
        except AudioError as e:
            print(f"(not played: {e.message})")
            return 0
    else:
        print(f"Playing {take_line(result)}")
    sd.play(result.audio, result.sample_rate)
    sd.wait()
    return 0


# --- download ------------------------------------------------------------------------------------
def download(args: argparse.Namespace) -> int:
    from core.store import (REGISTRY, REQUIRED, download_command, download_model, is_offline, local_model,
                            missing_models)

    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:  # before any transfer starts
        raise StudioError(f"Unknown model{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}.",
                          f"Choose from: {', '.join(REGISTRY)} (or none: every missing one).")
    asked = list(dict.fromkeys(args.names))
    missing = {m.name for m in missing_models(args.models)}
    if args.force:  # a damaged copy: fetch it again, though it is "there"
        names = asked or list(REQUIRED)
        for name in names:
            if (here := local_model(name, args.models)) is not None:
                raise StudioError(f"The {name} model is in the models folder ({here}), which is used before any download.",
                                  "Delete or move that copy, then run this command again (without --force).")
    else:
        names = [n for n in asked if n in missing] if asked else sorted(missing, key=list(REGISTRY).index)
    if not names:
        print("Already there: " + ", ".join(asked) + "." if asked else "All model weights are already there.")
        return 0
    if args.offline:
        raise StudioError("--offline was given, so nothing can be downloaded.",
                          "Drop --offline, or copy the files into the folders listed by the app.")
    if is_offline(None):
        raise StudioError("HF_HUB_OFFLINE is set in this shell, so nothing can be downloaded.",
                          "Run `unset HF_HUB_OFFLINE` (or start a new shell), then this command again.")
    from tqdm import tqdm

    for name in names:
        with tqdm(total=100, desc=name, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}") as bar:
            def progress(fraction: float, desc: str, bar=bar) -> None:
                bar.n = round(100 * fraction, 1)
                bar.set_postfix_str(desc[-40:], refresh=True)

            try:
                download_model(name, models_dir=args.models, progress=progress, force=args.force)
            except KeyboardInterrupt:  # the bytes fetched are kept (a .part file) and a new run goes on
                bar.close()
                print(f"\ndownload: interrupted in {name}; what was fetched is kept: run the same command "
                      "again to go on from there.", file=sys.stderr)
                return 130
    # Done when what was asked for is there (all the required models when nothing was named); the
    # optional ones still missing are mentioned, not a failure
    left = missing_models(args.models)
    failed = [m.name for m in left if (m.name in asked if asked else not m.optional)]
    others = [m.name for m in left if m.name not in failed]
    print("Done." if not failed else f"Still missing: {', '.join(failed)}.")
    if others:
        named = ", ".join(f"{n} (optional)" if REGISTRY[n].optional else n for n in others)
        print(f"Also missing: {named}; `{download_command(' '.join(others), args.models)}` fetches "
              f"{'them' if len(others) > 1 else 'it'}.")
    return 0 if not failed else 1


if __name__ == "__main__":
    from app.cli import main

    sys.exit(main())
