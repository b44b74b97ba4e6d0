"""Named sampling presets: presets/sampling.json, a user-editable file.

Only the file is read here (json, no torch), so the command line and the page can list the names
cheaply; `core.synth_types` checks each preset's settings against `core.sampling.Sampling`. A
file that cannot be read or parsed is a StudioError naming the file and the line, never a
traceback at import."""
from __future__ import annotations

import json
from pathlib import Path

from core.errors import StudioError

PRESETS_FILE = Path(__file__).resolve().parent.parent / "presets" / "sampling.json"
RESTORE_HINT = "Fix the file, or restore the shipped one (git checkout presets/sampling.json)."


def read_presets(path: str | Path | None = None) -> dict[str, dict]:
    """Preset name -> its settings as written (the "description" key removed; names starting with
    "_" are comments). `path`: default PRESETS_FILE. Raises StudioError for a missing, unreadable
    or malformed file."""
    path = Path(path or PRESETS_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise StudioError(f"Cannot read the sampling presets {path}: {e.strerror or e}.", RESTORE_HINT) from None
    except UnicodeDecodeError:
        raise StudioError(f"The sampling presets {path} are not UTF-8 text.", RESTORE_HINT) from None
    except RecursionError:  # arrays nested thousands deep: no preset file looks like that
        raise StudioError(f"The sampling presets {path} are nested too deeply to be presets.", RESTORE_HINT) from None
    except json.JSONDecodeError as e:
        raise StudioError(f"The sampling presets {path} are not valid JSON (line {e.lineno}, column {e.colno}: "
                          f"{e.msg}).", RESTORE_HINT) from None
    if not isinstance(data, dict):
        raise StudioError(f"The sampling presets {path} must be a JSON object of named presets, not "
                          f"{type(data).__name__}.", RESTORE_HINT)
    presets = {}
    for name, spec in data.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict):
            raise StudioError(f"Preset {name!r} in {path} must be an object of settings, not {type(spec).__name__}.",
                              RESTORE_HINT)
        presets[name] = {k: v for k, v in spec.items() if k != "description"}
    if not presets:
        raise StudioError(f"The sampling presets {path} name no preset.", RESTORE_HINT)
    return presets


def preset_names(path: str | Path | None = None) -> list[str]:
    """The presets' names, or [] when the file is broken (whoever uses one then says why)."""
    try:
        return list(read_presets(path))
    except StudioError:
        return []
