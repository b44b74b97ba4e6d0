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
in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with 400 for bad input,
401 for a wrong key, 429 when the queue is full and 503 when the weights are missing or damaged.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from app.gate import Gate, each_in_thread
from core.errors import BusyError, CheckpointError, DownloadError, ModelMissingError, StudioError
from core.instruction_words import MAX_INSTRUCTION_CHARS

log = logging.getLogger("vallex.api")

MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac",
               "opus": "audio/ogg", "pcm": "audio/pcm"}
MAX_INPUT_CHARS = 4096


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


def error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_error"
    if status == 401:
        kind = "authentication_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": "5"} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


def studio_error(e: StudioError) -> JSONResponse:
    status = 400
    if isinstance(e, BusyError):
        status = 429
    elif isinstance(e, (ModelMissingError, DownloadError, CheckpointError)):  # the server's models, not the request
        status = 503
    return error(status, e.user_message(), e.code)


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
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
        sent = token.encode("latin-1", "replace")
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
        try:
            data = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            return error(400, "The body must be a JSON object.", "invalid_json")
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(data), "a number")
            return error(400, f'The body must be a JSON object like {{"input": "Hello"}}, not {kind}.', "invalid_json")
        try:
            body = SpeechRequest.model_validate(data)
        except ValidationError as e:
            message, param = _validation_message(e)
            return error(400, message, "invalid_value", param)
        if body.voice is not None and not body.voice.strip():  # a blank form field, or a template gone wrong
            return error(400, "The voice is empty. Name a saved or bundled voice (GET /v1/voices lists them), "
                              "or leave 'voice' out for a voice the model makes up.", "invalid_value", "voice")
        if body.stream and body.response_format not in ("pcm", "wav"):
            return error(400, "Streaming sends raw audio as it is made: use response_format pcm or wav "
                              "with stream=true.", "invalid_value", "response_format")
        gone = threading.Event()  # the client hung up: the take stops at its next step
        try:
            watcher = asyncio.create_task(_watch_disconnect(request, gone))
            try:  # the whole take, or a streamed take's first sentence
                made = await run_in_threadpool(stream_request if body.stream else synthesize_request,
                                               studio, gate, body, gone.is_set)
            finally:
                watcher.cancel()
            if body.stream:  # from here Starlette notices a hang-up and stops sending
                chunks, headers = made
                return StreamingResponse(_until_gone(chunks, gone), media_type=MEDIA_TYPES[body.response_format],
                                         headers=headers)
            audio, headers = made
        except StudioError as e:
            return studio_error(e)
        except Exception:
            log.exception("speech request failed")
            return error(500, "Synthesis failed inside the studio; the server log has details.",
                         "internal_error")
        return Response(audio, media_type=MEDIA_TYPES[body.response_format], headers=headers)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
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


async def _until_gone(chunks, gone: threading.Event):
    """A streamed take's chunks, each made in a worker thread. When the client hangs up,
    Starlette cancels the response: the thread is abandoned at once (not waited for, as
    Starlette's iterate_in_threadpool would: that is a whole batch of sentences) and `gone`
    stops its take at the engine's next step."""
    try:
        async for chunk in each_in_thread(chunks):
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):  # cancelled, or closed before its end
        log.info("the client of a streamed speech request went away: stopping its take")
        gone.set()
        raise


def _options(body: SpeechRequest):
    from core.synth import SynthOptions

    return SynthOptions(language=body.language, accent=body.accent, preset=body.preset,
                        seed=body.seed, speed=body.speed,
                        instruction=body.instruction or body.instructions,
                        instruction_mode=body.instruction_mode)


def take_headers(seed: int | None, warnings: list[str], audio_s: float | None = None) -> dict[str, str]:
    """What a client may want besides the audio (HTTP headers are Latin-1: JSON keeps them ASCII)."""
    import json

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


def synthesize_request(studio, gate: Gate, body: SpeechRequest, stop=None) -> tuple[bytes, dict[str, str]]:
    """Runs in a worker thread: wait for the Studio (bounded), synthesize, encode. stop(): the
    client is gone, so the take ends early (its audio is not sent anywhere)."""
    from core.audio import encode_audio

    options = _options(body)
    with gate.turn(bounded=True):
        voice = studio.voices.load(body.voice) if body.voice else None
        result = studio.synthesize(body.input, voice=voice, options=options, stop=stop)
    seeds = [s.seed for s in result.sentences if s.ok]
    headers = take_headers(seeds[0] if seeds else None, result.warnings, len(result.audio) / result.sample_rate)
    return encode_audio(result.audio, result.sample_rate, body.response_format), headers


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), for audio sent as it is made."""
    import struct

    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def stream_request(studio, gate: Gate, body: SpeechRequest, stop=None):
    """Runs in a worker thread: make the first sentence (so bad input is still a JSON error), then
    return an iterator of int16 bytes, one chunk per sentence. The Studio is held per sentence.
    stop(): the client is gone (the take ends at once)."""
    from app.format import to_int16

    options = _options(body)
    with gate.turn(bounded=True):
        voice = studio.voices.load(body.voice) if body.voice else None
        sentences = studio.stream(body.input, voice=voice, options=options, stop=stop)
        first = next(sentences, None)

    def chunks():
        if body.response_format == "wav":
            yield streaming_wav_header(studio.sample_rate)
        sent = first
        while sent is not None:
            if len(sent.audio):
                yield to_int16(sent.audio).tobytes()
            with gate.turn(bounded=False):
                sent = next(sentences, None)

    # sent before the audio: the first sentence's seed and the notes known now (the take's, the
    # first sentence's), worded as SynthResult.warnings words them
    if first is None:
        return chunks(), take_headers(None, [])
    notes = list(first.context.warnings) if first.context is not None else []
    notes += [f"sentence {first.index + 1}: {w}" for w in first.warnings]
    return chunks(), take_headers(first.seed if first.ok else None, notes)
