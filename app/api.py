"""OpenAI-compatible HTTP API, served by the same process and port as the page.

    POST /v1/audio/speech   {"model", "input", "voice", "response_format", "speed",
                             + extras "language", "accent", "preset", "seed", "instruction",
                             "instruction_mode" (dsp | prompt)}
    GET  /v1/voices         saved voices
    GET  /v1/models         the one model

The official `openai` package works unchanged (`client.audio.speech.create(...)`). A take's audio
comes with headers: `X-Vallex-Seed` (the seed that makes it again: pass it back as "seed" with the
same input), `X-Vallex-Warnings` (a JSON list, ASCII-escaped: sentences skipped, instruction words
not understood, ...) and `X-Vallex-Audio-Seconds`. Errors come back
in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` (`param`: the field to fix),
with 400 for bad input (also a take in which the model made no audio at all: code "no_audio"),
401 for a wrong key, 413 for a body over 1 MiB, 429 when the queue is full and 503 when the weights
are missing or damaged. A client that hangs up stops its take, or leaves the line if still waiting.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
from typing import Literal

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.gate import Gate, each_in_thread
from core.errors import (BusyError, CheckpointError, DownloadError, ModelMissingError, StudioError, TextError,
                         VoiceError)
from core.instruction_words import MAX_INSTRUCTION_CHARS

log = logging.getLogger("vallex.api")

MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac",
               "opus": "audio/ogg", "pcm": "audio/pcm"}
MAX_INPUT_CHARS = 4096
# A full request is at most ~60 KB (4,096 characters of input even as \uXXXX pairs, two 500-character
# instructions); the body is read up to this and no further, so a client cannot fill the memory.
MAX_BODY_BYTES = 1 << 20
_SERVER_PATH = re.compile(r"(?<![\w.])/(?!v1/)(?:[^\s/'\"]+/)+[^\s/'\"]+")
EXAMPLE = '{"input": "Hello", "voice": "paimon"}'


class SpeechRequest(BaseModel):
    """The body of POST /v1/audio/speech (unknown fields are ignored, as OpenAI's are optional)."""

    model_config = ConfigDict(extra="ignore")
    model: str = "vallex-x"
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str | None = None
    response_format: Literal["wav", "mp3", "flac", "opus", "pcm"] = "mp3"
    # strict: true / "fast" / NaN are mistakes to point out, not values to coerce
    speed: float = Field(1.0, ge=0.5, le=2.0, strict=True, allow_inf_nan=False)
    language: str = "auto-mix"
    accent: str = "keep"
    preset: str = "balanced"
    instruction: str = Field("", max_length=MAX_INSTRUCTION_CHARS)
    # OpenAI's name for style directions; used when `instruction` is empty
    instructions: str = Field("", max_length=MAX_INSTRUCTION_CHARS)
    instruction_mode: Literal["dsp", "prompt"] = "dsp"
    seed: int | None = Field(None, strict=True)
    stream: bool = Field(False, strict=True)  # send each sentence as soon as it is made (pcm or wav only)
    stream_format: str = "audio"  # OpenAI's; its "sse" (audio in JSON events) is not served


def error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    if status == 401:
        kind = "authentication_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = None
    if status == 429:
        headers = {"Retry-After": "5"}
    elif status == 401:  # the challenge HTTP asks a 401 to carry
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers=headers)


def studio_error(e: StudioError, param: str | None = None) -> JSONResponse:
    status = 400
    if isinstance(e, BusyError):
        status = 429
    elif isinstance(e, (ModelMissingError, DownloadError, CheckpointError)):  # the server's models, not the request
        status = 503
    elif param is None:  # the field to fix, as OpenAI names it
        param = getattr(e, "param", None) or {VoiceError: "voice", TextError: "input"}.get(type(e))
    message = e.user_message()
    if isinstance(e, VoiceError):  # "the list" is the page's; an API client lists them here
        message = message.replace("from the list", "from GET /v1/voices")
        # a voice file's place on the server's disk is the owner's business, not a client's
        message = _SERVER_PATH.sub(lambda m: m.group(0).rsplit("/", 1)[-1], message)
    return error(status, message, e.code, param)


async def read_json(request: Request):
    """The body as JSON, or an error response that says what is wrong with it."""
    declared = request.headers.get("content-length", "")
    size, parts = int(declared) if declared.isdigit() else 0, []
    if size <= MAX_BODY_BYTES:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                break
            parts.append(chunk)
    if size > MAX_BODY_BYTES:
        return error(413, f"The body is over {MAX_BODY_BYTES >> 20} MiB; a request is a small JSON object "
                          f"like {EXAMPLE} with at most {MAX_INPUT_CHARS:,} characters of input.",
                     "body_too_large")
    body = b"".join(parts)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return error(400, f"The body is form data ({kind}); send a JSON object like {EXAMPLE} with "
                          "Content-Type: application/json.", "invalid_json")
    if not body.strip():
        return error(400, f"The body is empty; send a JSON object like {EXAMPLE}.", "invalid_json")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        return error(400, "The body is not UTF-8 text; send the JSON in UTF-8.", "invalid_json")
    except json.JSONDecodeError as e:
        return error(400, f"The body is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                          f"send a JSON object like {EXAMPLE}.", "invalid_json")
    except RecursionError:
        return error(400, "The body's JSON is nested too deeply to read; send a flat JSON object like "
                          f"{EXAMPLE}.", "invalid_json")
    except ValueError:  # what is left: a whole number past Python's 4,300-digit limit
        return error(400, "The body has a number too long to read (over 4,300 digits); a seed is a whole "
                          "number from -2**63 to 2**63 - 1.", "invalid_json")


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    if first.get("type") == "missing":
        return f"The field '{param}' is missing; send a JSON object like {EXAMPLE}.", param
    if param == "input" and first.get("type") == "string_too_short":
        return "The input is empty; give the text to speak.", param
    if param == "input" and first.get("type") == "string_too_long":
        return (f"The input has {len(first.get('input') or ''):,} characters; one request takes at most "
                f"{MAX_INPUT_CHARS:,}. Send the text in parts (a sentence boundary is a good place to cut), "
                "or make long texts with `python launch.py synth --text-file FILE`."), param
    if param in ("instruction", "instructions") and first.get("type") == "string_too_long":
        return (f"The {param} has {len(first.get('input') or ''):,} characters; the most is "
                f"{MAX_INSTRUCTION_CHARS}. Say what to change in a short phrase, e.g. \"slower, deeper\"."), param
    return f"Invalid value for '{param}': {first.get('msg')}.", param


def make_router(studio, gate: Gate, keys: set[str] | None = None) -> APIRouter:
    """Routes over one Studio. `keys`: accepted bearer keys (None = no key needed)."""
    router = APIRouter(prefix="/v1")

    def authorised(request: Request) -> bool:
        if not keys:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # as bytes: compare_digest refuses non-ASCII str (a header arrives as Latin-1 text)
        sent = token.strip().encode("latin-1", "replace")  # "Bearer  KEY": RFC 7235 allows more spaces
        return scheme.lower() == "bearer" and any(hmac.compare_digest(sent, k.encode("utf-8")) for k in keys)

    def denied() -> JSONResponse:
        return error(401, "Missing or wrong API key. Send 'Authorization: Bearer KEY' with the "
                          "key given to launch.py (--api-key, or a login's password).",
                     "invalid_api_key")

    @router.get("/models")
    def models(request: Request):
        if not authorised(request):
            return denied()
        return {"object": "list", "data": [{"id": "vallex-x", "object": "model",
                                            "owned_by": "vallex-studio", "created": 0}]}

    @router.get("/voices")
    def voices(request: Request):
        if not authorised(request):
            return denied()
        try:
            listed = studio.voices.list()
        except StudioError as e:
            return studio_error(e)
        data = [{"id": v.name, "object": "voice", "name": v.name, "language": v.language,
                 "transcript": v.transcript, "created": str(v.created)} for v in listed]
        return {"object": "list", "data": data}

    @router.post("/audio/speech")
    async def speech(request: Request):
        if not authorised(request):
            return denied()
        data = await read_json(request)
        if isinstance(data, Response):
            return data
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(data), "a number")
            return error(400, f"The body must be a JSON object like {EXAMPLE}, not {kind}.", "invalid_json")
        try:
            body = SpeechRequest.model_validate(data)
        except ValidationError as e:
            message, param = _validation_message(e)
            return error(400, message, "invalid_value", param)
        problem = _problem(body, data)
        if problem is not None:
            return problem
        try:  # checked here, so that a wrong field is said at once (not after a wait in the line)
            options = _options(body)
        except _FieldError as e:
            return studio_error(e.error, e.param)
        gone = threading.Event()  # the client hung up: the take stops at its next step
        try:
            watcher = asyncio.create_task(_watch_disconnect(request, gone))
            try:  # the whole take, or a streamed take's first sentence
                made = await anyio.to_thread.run_sync(stream_request if body.stream else synthesize_request,
                                                      studio, gate, body, options, gone.is_set, limiter=gate.threads)
            finally:
                watcher.cancel()
            if body.stream:  # from here Starlette notices a hang-up and stops sending
                chunks, headers = made
                return StreamingResponse(_until_gone(chunks, gone, gate.threads),
                                         media_type=MEDIA_TYPES[body.response_format], headers=headers)
            audio, headers = made
        except StudioError as e:
            return studio_error(e)
        except Exception:
            log.exception("speech request failed")
            return error(500, "Synthesis failed inside the studio; the server log has details.",
                         "internal_error")
        return Response(audio, media_type=MEDIA_TYPES[body.response_format], headers=headers)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                      include_in_schema=False)
    def unknown(path: str, request: Request):
        # after the real routes: an unknown path, or a known one with the wrong method
        known = {"audio/speech": "POST", "voices": "GET", "models": "GET"}
        if path in known:
            return error(405, f"/v1/{path} takes {known[path]}, not {request.method}.", "method_not_allowed")
        return error(404, f"There is no /v1/{path}. The API has POST /v1/audio/speech, GET /v1/voices and "
                          "GET /v1/models.", "not_found")

    return router


async def _watch_disconnect(request: Request, gone: threading.Event, every: float = 0.25) -> None:
    """Set `gone` when the client closes the connection: a client that timed out must not keep
    the studio busy for the rest of a long text (and the users queued behind it waiting)."""
    while not await request.is_disconnected():
        await asyncio.sleep(every)
    log.info("the client of a speech request went away: stopping its take")
    gone.set()


async def _until_gone(chunks, gone: threading.Event, limiter=None):
    """A streamed take's chunks, each made in a worker thread. When the client hangs up,
    Starlette cancels the response: the thread is abandoned at once (not waited for, as
    Starlette's iterate_in_threadpool would: that is a whole batch of sentences) and `gone`
    stops its take at the engine's next step."""
    try:
        async for chunk in each_in_thread(chunks, limiter):
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):  # cancelled, or closed before its end
        log.info("the client of a streamed speech request went away: stopping its take")
        gone.set()
        raise


def _problem(body: SpeechRequest, data: dict) -> JSONResponse | None:
    """A mistake across fields, or in a field whose type alone is not enough to check."""
    if body.voice is not None and not body.voice.strip():  # a blank form field, or a template gone wrong
        return error(400, "The voice is empty. Name a saved or bundled voice (GET /v1/voices lists them), "
                          "or leave 'voice' out for a voice the model makes up.", "invalid_value", "voice")
    if body.stream_format != "audio":  # OpenAI's server-sent events: a client would not understand raw audio
        return error(400, f"stream_format {body.stream_format!r} is not supported: leave it out "
                          "(or \"audio\"). The audio is the body; stream=true sends it sentence by sentence.",
                     "invalid_value", "stream_format")
    if body.stream and body.response_format not in ("pcm", "wav"):
        return error(400, f"Streaming sends raw audio as it is made: use response_format pcm or wav "
                          f"with stream=true, not {body.response_format}"
                          f"{'' if 'response_format' in data else ' (the default)'}.",
                     "invalid_value", "response_format")
    return None


class NoAudioError(StudioError):
    """A take with no audio at all: nothing to encode, and a client must not get an empty file."""

    code = "no_audio"

    def __init__(self, seed: int | None, warnings: list[str]):
        why = f" ({'; '.join(warnings[:3])})" if warnings else ""
        if seed is None:
            super().__init__(f"The model made no audio for this input{why}.", "Send it again, or reword the text.")
        else:
            super().__init__(f"The model made no audio for this input with seed {seed}{why}.",
                             "Send it again with another seed, or with none (the studio then draws again "
                             "when the model stops at once).")
        self.param = "seed" if seed is not None else None


class _FieldError(Exception):
    """A StudioError from one field of the request, with that field's name."""

    def __init__(self, error: StudioError, param: str | None):
        super().__init__(str(error))
        self.error, self.param = error, param


def _options(body: SpeechRequest):
    from core.synth import SynthOptions

    fields = dict(language=body.language, accent=body.accent, preset=body.preset, seed=body.seed,
                  speed=body.speed, instruction=body.instruction or body.instructions,
                  instruction_mode=body.instruction_mode)
    for name, value in fields.items():  # one at a time, so that an error names its field
        try:
            SynthOptions(**{name: value})
        except StudioError as e:
            sent_as = "instructions" if name == "instruction" and not body.instruction else name
            raise _FieldError(e, sent_as) from e
    try:
        return SynthOptions(**fields)
    except StudioError as e:  # fields fine alone but not together
        raise _FieldError(e, None) from e


def take_headers(seed: int | None, warnings: list[str], audio_s: float | None = None) -> dict[str, str]:
    """What a client may want besides the audio (HTTP headers are Latin-1: JSON keeps them ASCII)."""
    notes = [w if len(w) <= 300 else w[:297] + "..." for w in warnings]
    shown = len(notes)
    while len(json.dumps(notes[:shown])) > 1800:  # proxies and clients refuse headers of many KB
        shown -= 1
    more = [f"... and {len(notes) - shown} more"] if shown < len(notes) else []
    headers = {"X-Vallex-Warnings": json.dumps(notes[:shown] + more)}
    if seed is not None:
        headers["X-Vallex-Seed"] = str(seed)
    if audio_s is not None:
        headers["X-Vallex-Audio-Seconds"] = f"{audio_s:.3f}"
    return headers


def synthesize_request(studio, gate: Gate, body: SpeechRequest, options,
                       stop=None) -> tuple[bytes, dict[str, str]]:
    """Runs in a worker thread: wait for the Studio (bounded), synthesize, encode. stop(): the
    client is gone, so the take ends early (its audio is not sent anywhere), or leaves the line."""
    from core.audio import encode_audio

    # read before the wait: a voice that is not there is said at once, not after the line
    voice = studio.voices.load(body.voice) if body.voice else None
    with gate.turn(bounded=True, stop=stop):
        result = studio.synthesize(body.input, voice=voice, options=options, stop=stop)
    if not len(result.audio):  # the model stopped at once on every sentence (a seed given is kept)
        raise NoAudioError(body.seed, result.warnings)
    seeds = [s.seed for s in result.sentences if s.ok]
    headers = take_headers(seeds[0] if seeds else None, result.warnings, len(result.audio) / result.sample_rate)
    return encode_audio(result.audio, result.sample_rate, body.response_format), headers


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), for audio sent as it is made."""
    import struct

    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def stream_request(studio, gate: Gate, body: SpeechRequest, options, stop=None):
    """Runs in a worker thread: make sentences up to the first with audio (so bad input, and a take
    with no audio, are still JSON errors), then return an iterator of int16 bytes, one chunk per
    sentence. The Studio is held per sentence.
    stop(): the client is gone (the take ends at once, or leaves the line)."""
    from app.format import to_int16

    voice = studio.voices.load(body.voice) if body.voice else None
    with gate.turn(bounded=True, stop=stop):
        sentences = studio.stream(body.input, voice=voice, options=options, stop=stop)
        made = [next(sentences, None)]
    # up to the first sentence with audio: a take in which the model made none is an error,
    # as unstreamed, not a 200 with an empty body (or a bare WAV header)
    while made[-1] is not None and not len(made[-1].audio):
        with gate.turn(bounded=False, stop=stop):
            made.append(next(sentences, None))
    # the notes known now, worded as SynthResult.warnings words them: the take's, then each sentence's
    context = next((s.context for s in made if s is not None and s.context is not None), None)
    notes = list(context.warnings) if context is not None else []
    notes += [f"sentence {s.index + 1}: {w}" for s in made if s is not None for w in s.warnings]
    first = made[-1]
    if first is None:
        raise NoAudioError(body.seed, notes)

    def chunks():
        if body.response_format == "wav":
            yield streaming_wav_header(studio.sample_rate)
        sent = first
        while sent is not None:
            if len(sent.audio):
                yield to_int16(sent.audio).tobytes()
            with gate.turn(bounded=False, stop=stop):
                sent = next(sentences, None)

    # sent before the audio: the first sounding sentence's seed
    return chunks(), take_headers(first.seed if first.ok else None, notes)
