"""The models a Studio runs: the VALL-E X LM, EnCodec, Vocos, and Whisper when a transcript is
needed. Loaded once, thread-safe, on first use or ahead of it in a background thread
(`Models.preload`, which the server calls once its page is up).

    models = Models("models", dtype="int8")
    models.preload()          # optional: nothing is downloaded, failures wait for the first use
    lm = models.load().lm     # waits for the background load if it is still running
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from core.errors import StudioError, VoiceError, loading

log = logging.getLogger(__name__)

# the user-facing dtype -> the torch dtype of the weights (int8 / int4 quantize float32 weights)
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16", "int8": "float32", "int4": "float32"}


class Loaded:
    """The loaded models (and the files they came from). EnCodec (`codec`: ~3.5 s, mostly
    importing transformers) is loaded on first need: a take in a saved voice never encodes audio;
    Whisper (`asr`) is filled by Models.asr."""

    def __init__(self, lm, vocos, paths, load_codec):
        self.lm, self.vocos, self.paths = lm, vocos, paths
        self.asr = None
        self._codec = None
        self._load_codec = load_codec
        self._codec_lock = threading.Lock()

    @property
    def codec(self):
        with self._codec_lock:  # once, whichever thread asks first (the others wait for it)
            if self._codec is None:
                self._codec = self._load_codec()
            return self._codec


class Models:
    """models_dir: the models folder (core.store layout; None = the store's default); device:
    "cpu" | "cuda" | "cuda:N" | "mps"; dtype: one of DTYPES; offline: never download (None =
    the store's default)."""

    def __init__(self, models_dir=None, device: str = "cpu", dtype: str = "fp32", offline: bool | None = None):
        if dtype not in DTYPES:
            raise StudioError(f"Unknown dtype {dtype!r}.", f"Use one of {', '.join(DTYPES)}.")
        from core.devices import resolve_device

        resolve_device(device)  # a device this torch cannot use is refused now, not at the first take
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.device, self.dtype, self.offline = device, dtype, offline
        self.loaded: Loaded | None = None
        self._lock = threading.RLock()  # the LM and Vocos, Whisper
        self.load_seconds: float | None = None
        self.load_errors: dict[str, str] = {}  # model name -> why its file could not be loaded (last try)
        self.ready_at: float | None = None  # time.perf_counter() when the models became ready

    def load(self) -> Loaded:
        """The models, loaded now if they are not yet (downloaded first unless offline)."""
        if self.loaded is not None:  # no lock: a take must not wait for EnCodec's background load
            return self.loaded
        with self._lock:
            if self.loaded is not None:
                return self.loaded
            import torch

            from core.checkpoint import head_count
            from core.codec import Vocos
            from core.lm import VallEX
            from core.store import resolve_models

            t0 = time.perf_counter()
            kwargs = {} if self.offline is None else {"offline": self.offline}
            paths = resolve_models(self.models_dir, **kwargs)
            quantize = self.dtype if self.dtype in ("int8", "int4") else None
            lm = self._loading("vallex", paths.vallex, lambda: VallEX.from_checkpoint(
                paths.vallex, n_heads=head_count(paths.vallex), device=self.device,
                dtype=getattr(torch, DTYPES[self.dtype]), quantize=quantize), "the VALL-E X checkpoint")
            vocos = self._loading("vocos", paths.vocos,
                                  lambda: Vocos.from_pretrained(paths.vocos, device=self.device), "Vocos")
            self.loaded = Loaded(lm, vocos, paths, lambda: self._load_codec(paths))
            self.ready_at = time.perf_counter()
            self.load_seconds = self.ready_at - t0
            log.info("models loaded in %.1f s from %s", self.load_seconds, paths.vallex.parent.parent)
            return self.loaded

    def _loading(self, name: str, path: Path, load, what: str):
        """`core.errors.loading`; a damaged file's error says how to repair that copy."""
        from core.errors import CheckpointError
        from core.store import repair_hint

        try:
            loaded = loading(load, what)
        except CheckpointError as e:
            damaged = CheckpointError(e.message, repair_hint(name, path, self.models_dir))
            self.load_errors[name] = damaged.user_message()  # for the page's notice, before any take
            raise damaged from e
        self.load_errors.pop(name, None)
        return loaded

    def _load_codec(self, paths):
        from core.codec import Codec

        t0 = time.perf_counter()
        codec = self._loading("encodec", paths.encodec,
                              lambda: Codec.from_pretrained(paths.encodec, device=self.device), "EnCodec")
        log.info("EnCodec loaded in %.1f s", time.perf_counter() - t0)
        return codec

    def preload(self) -> threading.Thread | None:
        """Load the models (EnCodec included), then the text front-end's dictionaries (3-5 s
        more), in a background thread, so that the first take does not wait for them. Only when
        every required model is on disk: nothing is downloaded unasked. A failure is logged and
        left for the first take to report (`load` tries again there). Returns the thread, or None
        when there is nothing to do."""
        if self.loaded is not None:
            return None
        try:
            from core.store import missing_models

            if missing_models(self.models_dir, include_optional=False):
                return None
        except (ImportError, StudioError):
            return None

        def warm_text():
            from core.text import warmup

            t0 = time.perf_counter()
            warmup()
            log.info("text front-end ready in %.1f s", time.perf_counter() - t0)

        def run():
            # the LM and Vocos (every take), EnCodec (the page's first voice recording), the text
            # front-end's dictionaries; a failure is logged, and said again where it is needed
            for what, step in (("the models", self.load), ("EnCodec", lambda: self.load().codec),
                               ("the text front-end", warm_text)):
                try:
                    step()
                except Exception as e:  # noqa: BLE001 - reported again by the first use that needs it
                    log.warning("loading %s in the background failed (its first use will say why): %s", what, e)
                    if what == "the models":
                        return

        thread = threading.Thread(target=run, name="vallex-preload", daemon=True)
        thread.start()
        return thread

    def asr(self, purpose: str = "transcribe"):
        """Whisper (core.asr.Transcriber), loaded on first need. `purpose` ("transcribe" or
        "translate") words the error when it is not installed, which is said before anything loads."""
        from core.store import download_command, find_model

        installed = self.loaded.paths.asr if self.loaded is not None else find_model("asr", self.models_dir)
        if installed is None:
            get = f"`{download_command('asr', self.models_dir)}` (about 484 MB)"
            if purpose == "translate":
                raise VoiceError("Translation needs the Whisper speech-recognition model, which is not installed.",
                                 f"Download it with {get}.")
            raise VoiceError("No transcript was given and no speech-recognition model (Whisper) is installed.",
                             f"Type what the recording says, or download Whisper with {get}.")
        m = self.load()
        with self._lock:
            if m.asr is None:
                from core.asr import Transcriber

                m.asr = loading(lambda: Transcriber.from_pretrained(m.paths.asr, device=self.device), "Whisper")
            return m.asr

    def status(self) -> dict:
        """What is loaded and where (cheap; never loads or downloads)."""
        info = {"loaded": self.loaded is not None, "device": self.device, "dtype": self.dtype,
                "models_dir": str(self.models_dir) if self.models_dir else None, "load_seconds": self.load_seconds,
                "asr_loaded": bool(self.loaded and self.loaded.asr), "load_errors": list(self.load_errors.values())}
        try:
            from core.store import missing_models

            info["missing"] = [m.name for m in missing_models(self.models_dir)]
        except (ImportError, StudioError) as e:
            info["missing"] = f"unknown ({e})"
        return info
