"""presets/sampling.json is a file users edit: a slip in it is a message naming the file and the
line, never a traceback at import; a preset added to it is usable everywhere (API, CLI, page)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app import cli
from core import presets, synth_types
from core.errors import StudioError
from core.synth import SynthOptions

ROOT = Path(__file__).resolve().parent.parent


def test_a_malformed_file_names_itself_and_the_line(tmp_path):
    bad = tmp_path / "sampling.json"
    bad.write_text('{\n  "balanced": {"top_k": 50,\n  "top_p": 0.9 "temperature": 1}\n}\n')
    with pytest.raises(StudioError, match=r"sampling.json are not valid JSON \(line 3, column 16: Expecting") as e:
        presets.read_presets(bad)
    assert "git checkout presets/sampling.json" in e.value.user_message()
    for text, want in [("[1, 2]", "must be a JSON object"), ('{"a": 3}', "Preset 'a' .* must be an object"),
                       ("{}", "name no preset"), ("[" * 100_000 + "]" * 100_000, "nested too deeply")]:
        bad.write_text(text)
        with pytest.raises(StudioError, match=want):
            presets.read_presets(bad)
    with pytest.raises(StudioError, match="Cannot read the sampling presets"):
        presets.read_presets(tmp_path / "gone.json")
    assert presets.preset_names(tmp_path / "gone.json") == []


def test_a_bad_preset_is_left_out_and_choosing_it_says_why(tmp_path, monkeypatch):
    path = tmp_path / "sampling.json"
    path.write_text(json.dumps({"ok": {"top_k": 5}, "typo": {"top_kk": 5}, "wild": {"top_p": 5.0}}))
    good, bad = synth_types.load_presets(path)
    assert good == {"ok": {"top_k": 5}}
    assert "unknown setting 'top_kk'" in bad["typo"] and "top_p" in bad["wild"]
    monkeypatch.setattr(synth_types, "PRESETS", good)
    monkeypatch.setattr(synth_types, "PRESET_PROBLEMS", bad)
    assert SynthOptions(preset="ok").sampling(0).top_k == 5
    with pytest.raises(StudioError, match="Preset 'typo' in .* is unusable: unknown setting 'top_kk'"):
        SynthOptions(preset="typo")
    # a broken file: every preset says so
    path.write_text("{oops")
    monkeypatch.setattr(synth_types, "PRESETS", {})
    monkeypatch.setattr(synth_types, "PRESET_PROBLEMS", synth_types.load_presets(path)[1])
    with pytest.raises(StudioError, match="not valid JSON"):
        SynthOptions()


def test_a_preset_added_to_the_file_is_a_cli_choice(tmp_path, monkeypatch):
    path = tmp_path / "sampling.json"
    shipped = json.loads(presets.PRESETS_FILE.read_text())
    path.write_text(json.dumps({**shipped, "turbo": {"top_k": 10}}))
    monkeypatch.setattr(presets, "PRESETS_FILE", path)
    args = cli.build_parser().parse_args(["say", "Hi.", "--preset", "turbo"])
    assert args.preset == "turbo"
    path.write_text("{broken")  # any name then: the take says what is wrong with the file
    assert cli.build_parser().parse_args(["say", "Hi.", "--preset", "turbo"]).preset == "turbo"


def test_the_command_line_starts_with_a_broken_file_and_says_what_is_wrong(tmp_path):
    """In a copy of core/ and app/ beside a broken presets/sampling.json, `say` exits with the
    file's problem, not a JSONDecodeError traceback from the import."""
    import shutil

    for part in ("core", "app", "launch.py"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "sampling.json").write_text('{"balanced": {"top_k": 50,}}')
    r = subprocess.run([sys.executable, "launch.py", "say", "Hello.", "--models", str(tmp_path / "none"),
                        "--offline", "--out", str(tmp_path / "x.wav")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "sampling.json are not valid JSON (line 1" in r.stderr
