"""Command line: `python launch.py [options]` starts the studio; subcommands work without it.

    python launch.py                      # the web UI + /v1 API on http://127.0.0.1:7860
    python launch.py synth --text-file lines.txt --out-dir out/ --voice me
    python launch.py record --out me.wav --save-voice me
    python launch.py say "Hello there" --voice me
    python launch.py download

The console script `vallex-studio` is this module's `main`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.errors import Stopped, StudioError
from core.presets import preset_names

log = logging.getLogger("vallex.cli")

LANGUAGES = ["auto-mix", "auto", "en", "zh", "ja", "mix"]
FORMATS = ["wav", "flac", "mp3", "ogg", "opus"]


def _whole(lo: int, hi: int):
    """argparse type: a whole number from lo to hi. A bad value stops the command with
    "argument --port: 99999 is out of range: use 1 to 65535" (exit 2), not a traceback later."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {lo} to {hi}")
        return value

    return parse


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only where X says something (not None/False/suppressed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _model_args(p: argparse.ArgumentParser, sub: bool) -> None:
    """Options every command shares. On subparsers the defaults are SUPPRESSed so a value given
    before the subcommand (`launch.py --models M synth ...`) is not overwritten by the default."""
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    g = p.add_argument_group("models")
    g.add_argument("--models", metavar="DIR", default=d(None),
                   help="models folder (vallex/, vocos/, encodec/, asr/); default: $VALLEX_MODELS, else models/ "
                        "beside launch.py (files missing there are looked up in the Hugging Face cache)")
    g.add_argument("--device", default=d("cpu"), help="torch device: cpu, cuda, cuda:1, mps")
    g.add_argument("--dtype", choices=["fp32", "bf16", "int8", "int4"], default=d("fp32"),
                   help="weights precision (int8 = dynamic int8 Linear layers; int4 = the AR in 4 bits, "
                        "the NAR in int8: fastest on a CPU with AVX-512 VNNI)")
    g.add_argument("--offline", action="store_true", default=d(False),
                   help="never download; say what is missing instead")
    g.add_argument("--voices", metavar="DIR", default=d(None),
                   help="saved voices folder; default: the studio data folder")
    g.add_argument("-v", "--verbose", action="store_true", default=d(False), help="debug logging")


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server (no subcommand)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 exposes the studio to your network")
    g.add_argument("--port", type=_whole(1, 65535), default=7860, help="port for the page and the /v1 API")
    g.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link (needs the internet; use --auth)")
    g.add_argument("--auth", metavar="USER:PASS", action="append", default=None,
                   help="require this login for the page (repeatable)")
    g.add_argument("--auth-file", metavar="FILE", default=None,
                   help="file with one USER:PASS per line (# comments allowed)")
    g.add_argument("--api-key", metavar="KEY", default=None,
                   help="bearer key for /v1 (default when auth is on: any login's password)")
    g.add_argument("--max-queue", type=_whole(1, 10_000), default=16,
                   help="requests allowed to wait; more get a 'busy' answer (HTTP 429)")
    g.add_argument("--lazy", action="store_true",
                   help="load the models on the first take instead of in the background at start")


def _synth_args(sp: argparse._SubParsersAction) -> None:
    p = sp.add_parser("synth", help="batch synthesis: text file or folder of .txt -> audio files",
                      formatter_class=_Help)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-file", metavar="FILE", help="one utterance per non-empty line")
    src.add_argument("--in-dir", metavar="DIR", help="folder of .txt files (any case), one utterance each")
    p.add_argument("--out-dir", metavar="DIR", required=True, help="where audio files go")
    _voice_args(p)
    p.add_argument("--format", choices=FORMATS, default="wav", help="output audio format")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    _model_args(p, sub=True)


def _voice_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("voice and sampling")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--voice", help="a saved voice name")
    v.add_argument("--prompt", metavar="AUDIO", help="clone from this recording (3-10 s of speech)")
    g.add_argument("--transcript", help="what is said in --prompt (default: transcribed by ASR)")
    g.add_argument("--language", choices=LANGUAGES, default="auto-mix", help="text language")
    g.add_argument("--accent", choices=["keep", "en", "zh", "ja"], default="keep",
                   help="speak every language with this accent")
    # the names in presets/sampling.json (a broken file: any name, and the take says what is wrong)
    g.add_argument("--preset", choices=preset_names() or None, default="balanced", help="sampling preset")
    g.add_argument("--seed", type=int, default=None, help="random seed (same seed, same audio)")
    g.add_argument("--speed", type=float, default=1.0, help="speaking speed, 0.5-2")
    g.add_argument("--instruction", default="", help='voice edit, e.g. "deeper, slower"')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vallex-studio",
        description="VALL-E X voice-cloning studio. With no subcommand: start the web UI and "
                    "the OpenAI-compatible API (POST /v1/audio/speech, GET /v1/voices).",
        formatter_class=_Help,
    )
    _server_args(p)
    _model_args(p, sub=False)
    sp = p.add_subparsers(dest="command", metavar="COMMAND")
    _synth_args(sp)

    r = sp.add_parser("record", help="record a prompt from the desktop microphone",
                      formatter_class=_Help)
    r.add_argument("--out", metavar="FILE", default="prompt.wav", help="where the recording goes")
    r.add_argument("--seconds", type=float, default=6.0, help="recording length")
    r.add_argument("--save-voice", metavar="NAME", help="also save it as a named voice")
    r.add_argument("--transcript", help="what you said (default: transcribed by ASR)")
    _model_args(r, sub=True)

    s = sp.add_parser("say", help="speak text through the speakers",
                      formatter_class=_Help)
    s.add_argument("text", help="what to say")
    s.add_argument("--out", metavar="FILE", help="also save the audio here")
    _voice_args(s)
    _model_args(s, sub=True)

    d = sp.add_parser("download", help="download the model weights that are missing",
                      formatter_class=_Help)
    d.add_argument("names", nargs="*", help="models to fetch (default: every missing one)")
    d.add_argument("--force", action="store_true",
                   help="download again into the Hugging Face cache, though the model is there (a damaged copy)")
    _model_args(d, sub=True)
    return p


def parse_auth(pairs: list[str] | None, auth_file: str | None) -> list[tuple[str, str]] | None:
    """`USER:PASS` strings and/or a file of them -> list of (user, password), or None if none."""
    lines = list(pairs or [])
    if auth_file:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.reason if isinstance(e, UnicodeDecodeError) else e.strerror
            raise StudioError(f"Cannot read the auth file {auth_file}: {why}.",
                              "Give a readable UTF-8 file with one USER:PASS per line.") from e
        lines += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for item in lines:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise StudioError(f"Bad login {item.split(':')[0]!r}: expected USER:PASS.",
                              "Write --auth alice:secret, or one alice:secret per line in the file.")
        out.append((user, password))
    return out or None


def make_studio(args: argparse.Namespace):
    """The pipeline object for these options (models load lazily on first use)."""
    from core.synth import Studio

    return Studio(models_dir=args.models, device=args.device, dtype=args.dtype,
                  offline=args.offline or None, voices_dir=args.voices)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one "HTTP Request: GET ..." line per request (downloads, Gradio's own calls)
        for noisy in ("httpx", "httpx2"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command is None:
            from app.server import ServerOptions, serve

            opts = ServerOptions(host=args.host, port=args.port, share=args.share,
                                 auth=parse_auth(args.auth, args.auth_file), api_key=args.api_key,
                                 max_queue=args.max_queue, preload=not args.lazy)
            serve(make_studio(args), opts)
            return 0
        from app import commands

        return commands.run(args)
    except Stopped:  # Ctrl-C before the first sentence was made: what the user asked for
        print("Stopped before the first sentence was made; nothing was saved.", file=sys.stderr)
        return 130
    except StudioError as e:
        print(f"error: {e.user_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
