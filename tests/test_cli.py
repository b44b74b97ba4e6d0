"""CLI: options, logins, batch synthesis (resume, atomic writes, summary), record/say without a
sound card, download, and the launch options reaching Gradio (share offline, auth, API key)."""
from __future__ import annotations

import codecs
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from app import batch, cli, commands
from core.errors import StudioError

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_option():
    out = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for opt in ["--host", "--port", "--share", "--auth", "--auth-file", "--api-key", "--models",
                "--device", "--dtype", "--offline", "--voices", "--max-queue",
                "synth", "record", "say", "download"]:
        assert opt in out, opt
    assert "127.0.0.1" in out and "fp32" in out


def test_model_options_before_or_after_subcommand():
    p = cli.build_parser()
    a = p.parse_args(["--models", "/m", "--dtype", "int8", "synth", "--text-file", "t", "--out-dir", "o"])
    b = p.parse_args(["synth", "--text-file", "t", "--out-dir", "o", "--models", "/m", "--dtype", "int8"])
    for args in (a, b):
        assert (args.models, args.dtype, args.command, args.device) == ("/m", "int8", "synth", "cpu")
    assert p.parse_args([]).host == "127.0.0.1"
    assert p.parse_args(["--dtype", "int4"]).dtype == "int4"  # every precision Studio takes
    with pytest.raises(SystemExit):
        p.parse_args(["--dtype", "fp8"])


def test_parse_auth(tmp_path):
    f = tmp_path / "logins"
    f.write_text("# studio logins\nbob:pw2\n\ncarol:a:b\n")
    assert cli.parse_auth(["alice:pw1"], str(f)) == [("alice", "pw1"), ("bob", "pw2"), ("carol", "a:b")]
    assert cli.parse_auth(None, None) is None
    with pytest.raises(StudioError, match="USER:PASS"):
        cli.parse_auth(["nopassword"], None)
    with pytest.raises(StudioError, match="auth file"):
        cli.parse_auth(None, str(tmp_path / "missing"))


def test_bad_auth_is_a_message_not_a_traceback():
    r = subprocess.run([sys.executable, "launch.py", "--auth", "oops"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert "USER:PASS" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("argv, says", [
    (["--port", "99999"], "argument --port: 99999 is out of range: use 1 to 65535"),
    (["--port", "0"], "argument --port: 0 is out of range"),
    (["--port", "web"], "argument --port: 'web' is not a whole number"),
    (["--max-queue", "0"], "argument --max-queue: 0 is out of range: use 1 to"),
])
def test_numbers_out_of_range_stop_at_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


def test_an_address_that_cannot_be_served_is_named_before_launch():
    from app.server import check_address

    with pytest.raises(StudioError, match="no such address") as e:
        check_address("nosuch.invalid", 7860)
    assert "127.0.0.1" in e.value.user_message()
    with pytest.raises(StudioError, match="not an address of this machine"):
        check_address("192.0.2.1", 7860)  # TEST-NET-1: never a local address
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StudioError, match=f"Port {port} on 127.0.0.1 is already in use") as e:
            check_address("127.0.0.1", port)
        assert f"--port {port + 1}" in e.value.user_message()
    check_address("127.0.0.1", port)  # free again: no error


def test_a_busy_port_is_a_message_not_a_traceback():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "launch.py", "--port", str(port), "--models", "no-such-dir"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HF_HUB_OFFLINE": "1",
                                "GRADIO_ANALYTICS_ENABLED": "False"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "already in use" in r.stderr and "Traceback" not in r.stderr


def test_batch_jobs_from_file_and_folder(tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("First line.\n\nSecond line.\n")
    args = cli.build_parser().parse_args(["synth", "--text-file", str(text), "--out-dir", str(tmp_path / "o")])
    jobs = commands.batch_jobs(args).jobs
    assert [(j.text, j.out.name) for j in jobs] == [("First line.", "0001.wav"), ("Second line.", "0003.wav")]
    d = tmp_path / "texts"
    d.mkdir()
    (d / "b.txt").write_text("Bee.")
    (d / "a.txt").write_text("Ay.")
    (d / "empty.txt").write_text("  ")
    args = cli.build_parser().parse_args(["synth", "--in-dir", str(d), "--out-dir", "o", "--format", "flac"])
    batch = commands.batch_jobs(args)
    assert [(j.text, j.out.name) for j in batch.jobs] == [("Ay.", "a.flac"), ("Bee.", "b.flac")]
    assert [p.name for p in batch.empty] == ["empty.txt"] and not batch.unreadable


def test_in_dir_reads_any_case_and_any_utf_and_names_what_it_cannot_read(tmp_path):
    """One bad file in a folder is named and left out, never the end of the batch; Notepad's UTF-16
    and a UTF-8 BOM are read; .TXT counts; macOS's "._" sidecars are not inputs."""
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.TXT").write_text("Upper case.")
    (d / "b.txt").write_bytes("Hello, 世界.".encode("utf-16"))
    (d / "c.txt").write_bytes(codecs.BOM_UTF8 + "With a BOM.".encode())
    (d / "d.txt").write_bytes("你好，世界。".encode("gbk"))
    (d / "e.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (d / "._a.txt").write_bytes(b"\x00\x05\x16\x07")
    (d / "f.txt").mkdir()
    args = cli.build_parser().parse_args(["synth", "--in-dir", str(d), "--out-dir", str(tmp_path / "o")])
    batch = commands.batch_jobs(args)
    assert [(j.text, j.out.name) for j in batch.jobs] == [
        ("Upper case.", "a.wav"), ("Hello, 世界.", "b.wav"), ("With a BOM.", "c.wav")]
    assert [p.name for p, _ in batch.unreadable] == ["d.txt", "e.txt"]
    assert "d.txt is not UTF-8 text" in batch.unreadable[0][1] and "Save it as UTF-8" in batch.unreadable[0][1]
    assert "e.txt is not a text file" in batch.unreadable[1][1]
    (d / "a.txt").write_text("Clash.")
    if len(list(d.iterdir())) == 8:  # a case-sensitive disk: a.txt is a second file beside a.TXT
        with pytest.raises(StudioError, match="a.TXT and a.txt would both be saved as a.wav"):
            commands.batch_jobs(args)


def test_unreadable_or_empty_text_inputs_are_refused_with_the_reason(tmp_path):
    # Not UTF-8, or no text at all: a clear error naming the file, never a traceback or a silent
    # run that makes nothing.
    binary = tmp_path / "lines.txt"
    binary.write_bytes(b"\xc0\xff\x00 not text")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xc0\xff")
    for argv, want in [(["--text-file", str(binary)], "lines.txt is not a text file"),
                       (["--text-file", str(empty)], "empty.txt has no text"),
                       (["--in-dir", str(folder)], "No .txt file in .* has text to speak .*a.txt is not UTF-8")]:
        args = cli.build_parser().parse_args(["synth", *argv, "--out-dir", str(tmp_path / "o")])
        with pytest.raises(StudioError, match=want):
            commands.batch_jobs(args)
    with pytest.raises(StudioError, match="Cannot read the auth file"):
        cli.parse_auth(None, str(binary))


def test_write_atomic_leaves_no_partial_file(tmp_path):
    out = tmp_path / "sub" / "x.wav"
    commands.write_atomic(out, b"abc")
    assert out.read_bytes() == b"abc"

    with pytest.raises(TypeError):
        commands.write_atomic(tmp_path / "y.wav", object())  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_stale_temp_files_of_a_killed_run_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """What write_atomic leaves when its process is killed between writing and renaming goes at the
    next run; a live process's temp file, one for an output this batch does not make, a finished
    output and other dot files stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".0003.wav.{dead.pid}.k2j_x9ab.part"
    live = tmp_path / f".0004.wav.{os.getpid()}.abcd1234.part"
    other = tmp_path / f".notes.txt.{dead.pid}.abcd1234.part"
    keep = [tmp_path / "0001.wav", tmp_path / ".hidden", tmp_path / ".0005.wav.notapid.x.part", live, other]
    for p in [stale, *keep]:
        p.write_bytes(b"x")
    names = {"0001.wav", "0003.wav", "0004.wav", "0005.wav"}
    assert commands.remove_stale_parts(tmp_path, names) == 1
    assert not stale.exists() and all(p.exists() for p in keep)
    # what write_atomic itself names its temp file matches what is removed
    real = tempfile.mkstemp
    seen = []

    def spy(**kw):
        fd, path = real(**kw)
        seen.append(Path(path).name)
        return fd, path
    monkeypatch.setattr(tempfile, "mkstemp", spy)
    commands.write_atomic(tmp_path / "0006.wav", b"abc")
    m = batch._PART.fullmatch(seen[0])
    assert m and m.group(1) == "0006.wav" and int(m.group(2)) == os.getpid()


def test_record_without_sound_card_says_so(monkeypatch, capsys):
    import sounddevice as sd

    def no_device(*a, **k):
        raise sd.PortAudioError("Error querying device -1")

    monkeypatch.setattr(sd, "query_devices", no_device)
    rc = cli.main(["record", "--out", "x.wav"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "No audio input device found" in err and "web page" in err


def test_say_without_sound_card_says_so():
    # this machine really has no sound card; `say` must stop before loading any model
    r = subprocess.run([sys.executable, "launch.py", "say", "hello", "--models", "/nonexistent"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "No audio output device found" in r.stderr or "No audio system" in r.stderr
    assert "Traceback" not in r.stderr


def test_lazy_flag_turns_the_background_load_off():
    from app.cli import build_parser
    from app.server import ServerOptions

    assert ServerOptions().preload is True
    assert build_parser().parse_args([]).lazy is False
    assert build_parser().parse_args(["--lazy"]).lazy is True


@pytest.mark.parametrize("flag, preload", [([], True), (["--lazy"], False)])
def test_lazy_flag_reaches_the_server(monkeypatch, tmp_path, flag, preload):
    import app.server
    from app import cli

    seen = []
    monkeypatch.setattr(app.server, "serve", lambda studio, opts: seen.append(opts))
    assert cli.main(["--models", str(tmp_path), "--voices", str(tmp_path / "v"), "--offline", *flag]) == 0
    assert [o.preload for o in seen] == [preload]


def test_a_take_that_waited_for_the_models_is_timed_from_when_they_were_ready():
    from app.format import generation_seconds

    assert generation_seconds(10.0, 14.0, 2.0) == 4.0  # loaded long before the take
    assert generation_seconds(10.0, 14.0, 11.5) == 2.5  # the take waited 1.5 s for a (background) load
    assert generation_seconds(10.0, 14.0, None) == 4.0
    assert generation_seconds(10.0, 14.0, 14.0) is None  # nothing left to time


def test_auth_keys_for_v1():
    from app.server import ServerOptions, api_keys

    assert api_keys(ServerOptions()) is None
    assert api_keys(ServerOptions(auth=[("a", "pw")])) == {"pw"}
    assert api_keys(ServerOptions(auth=[("a", "pw")], api_key="k")) == {"k"}


def test_gate_bounds_the_line():
    import threading
    import time

    from app.gate import Gate
    from core.errors import BusyError

    gate = Gate(max_waiting=1)
    release, entered, ran = threading.Event(), threading.Event(), []

    def hold():
        with gate.turn():
            entered.set()
            release.wait(10)

    def wait_turn():
        with gate.turn():
            ran.append(True)

    t1 = threading.Thread(target=hold)
    t1.start()
    assert entered.wait(10)
    t2 = threading.Thread(target=wait_turn)
    t2.start()
    for _ in range(500):
        if gate.waiting == 1:
            break
        time.sleep(0.01)
    with pytest.raises(BusyError, match="busy"):
        with gate.turn():
            pass
    release.set()
    t1.join(10)
    t2.join(10)
    assert ran == [True] and gate.waiting == 0


def test_no_weights_and_failed_share_keep_the_page_working(tmp_path):
    """No weights + --share offline without --auth: warnings, a clear notice, the page still works."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tests.app_server import running_app

    empty = tmp_path / "no-models"
    empty.mkdir()
    with running_app(empty, tmp_path, "--share") as server:
        page = requests.get(server.url, timeout=10)
        assert page.status_code == 200
        notice = Client(server.url, verbose=False).predict(api_name="/status")
        for words in ("Model weights missing", "vallex", "GB", "python launch.py download", str(empty)):
            assert words in notice, words
        with pytest.raises(AppError, match="Model weights missing"):
            Client(server.url, verbose=False).predict("Hello there.", api_name="/speak")
        r = requests.post(server.url + "v1/audio/speech", json={"input": "Hello"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_missing"
        log = server.log()
    assert "Sharing without --auth" in log
    assert "Could not open the public share link" in log and server.url.rstrip("/") in log


def test_synth_batch_resumes_and_summarises(tiny_models, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("The first line to say.\nThe second line to say.\n")
    out = tmp_path / "out"
    argv = ["synth", "--text-file", str(lines), "--out-dir", str(out), "--models", str(tiny_models),
            "--voices", str(tmp_path / "voices"), "--offline", "--seed", "1"]
    assert cli.main(argv) == 0
    assert "2 made" in capsys.readouterr().out
    made = sorted(out.iterdir())
    assert [p.name for p in made] == ["0001.wav", "0002.wav"]
    first = made[0].read_bytes()
    assert sf.info(made[0]).samplerate == 24000 and sf.info(made[0]).frames > 0
    made[1].unlink()  # half-done batch: one output is missing
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out
    assert "1 made" in summary and "1 already done" in summary
    assert made[0].read_bytes() == first  # untouched
    assert not list(out.glob(".*.part"))  # no temp files left


def test_synth_in_dir_makes_the_readable_files_and_names_the_rest(tiny_models, tmp_path, capsys):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "good.txt").write_text("A line to say.")
    (d / "gbk.txt").write_bytes("你好，世界。".encode("gbk"))
    (d / "blank.txt").write_text("\n")
    argv = ["synth", "--in-dir", str(d), "--out-dir", str(tmp_path / "out"), "--models", str(tiny_models),
            "--voices", str(tmp_path / "voices"), "--offline", "--seed", "1"]
    assert cli.main(argv) == 1  # something was not made: the exit status says so
    out = capsys.readouterr().out
    assert "1 made" in out and "1 failed, 1 empty" in out
    assert "failed gbk.txt:" in out and "gbk.txt is not UTF-8 text" in out and "empty blank.txt" in out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.wav"]


def test_say_reports_the_take_its_warnings_and_the_seed_that_remakes_it(tiny_models, tmp_path, capsys):
    import re

    base = ["say", "Hello there.", "--models", str(tiny_models), "--voices", str(tmp_path / "v"), "--offline",
            "--instruction", "deeper and purple"]
    assert cli.main(base + ["--out", str(tmp_path / "a.wav")]) == 0
    out, err = capsys.readouterr()
    assert 'warning: instruction: not understood "purple"' in err
    m = re.search(r"Saved .*a\.wav: [0-9.]+ s of speech in [0-9.]+ s; --seed (-?\d+) makes it again", out)
    assert m, out
    assert cli.main(base + ["--out", str(tmp_path / "b.wav"), "--seed", m.group(1)]) == 0
    assert sf.read(tmp_path / "a.wav")[0].tolist() == sf.read(tmp_path / "b.wav")[0].tolist()
    # an empty --voice (a shell variable left unset) is pointed out, not taken as "no voice"
    assert cli.main(base + ["--out", str(tmp_path / "c.wav"), "--voice", ""]) != 0
    assert "--voice is empty" in capsys.readouterr().err and not (tmp_path / "c.wav").exists()


def test_synth_batch_logs_each_files_warnings(tiny_models, tmp_path, caplog):
    lines = tmp_path / "lines.txt"
    lines.write_text("The first line to say.\n")
    argv = ["synth", "--text-file", str(lines), "--out-dir", str(tmp_path / "out"), "--models", str(tiny_models),
            "--voices", str(tmp_path / "voices"), "--offline", "--seed", "1", "--instruction", "purple"]
    assert cli.main(argv) == 0
    assert '0001.wav: instruction: not understood "purple"' in caplog.text


def test_synth_output_problems_are_messages_and_keep_finished_files(tiny_models, tmp_path, capsys,
                                                                     monkeypatch):
    import errno

    lines = tmp_path / "lines.txt"
    lines.write_text("The first line to say.\nThe second line to say.\n")
    base = ["synth", "--text-file", str(lines), "--models", str(tiny_models), "--voices", str(tmp_path / "v"),
            "--offline", "--seed", "1"]
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    assert cli.main(base + ["--out-dir", str(a_file)]) == 2
    assert f"Cannot write into --out-dir {a_file}: it is a file" in capsys.readouterr().err
    assert cli.main(base + ["--out-dir", str(tmp_path / "o"), "--transcript", "hi"]) == 2
    assert "no --prompt was given" in capsys.readouterr().err

    real = commands.write_atomic
    calls = []

    def disk_fills_up(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(commands, "write_atomic", disk_fills_up)
    out = tmp_path / "out"
    assert cli.main(base + ["--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Cannot write" in err and "No space left on device" in err and "files already made are kept" in err
    assert [p.name for p in out.iterdir()] == ["0001.wav"]
    monkeypatch.setattr(commands, "write_atomic", real)
    assert cli.main(base + ["--out-dir", str(out)]) == 0  # the same command finishes the batch
    assert "1 made" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["0001.wav", "0002.wav"]
    # ordinary files, readable as the umask allows (not mkstemp's private 0600)
    mask = os.umask(0o022)
    os.umask(mask)
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir()} == {0o666 & ~mask}

    # Ctrl-C in a batch: the files made are complete, and the summary says how to go on
    def interrupted(path, data):  # Ctrl-C while the second file is on its way
        if path.name == "0002.wav":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(commands, "write_atomic", interrupted)
    assert cli.main(base + ["--out-dir", str(tmp_path / "o2")]) == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 made" in err and "run the same command again" in err
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["0001.wav"]


def test_say_checks_out_before_the_take_and_never_loses_it(tiny_models, tmp_path, capsys, monkeypatch):
    import core.audio

    base = ["say", "Hello there.", "--models", str(tiny_models), "--voices", str(tmp_path / "v"), "--offline",
            "--seed", "1"]
    loads = []
    monkeypatch.setattr(cli, "make_studio", lambda args, real=cli.make_studio: loads.append(1) or real(args))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "folder.wav").mkdir()
    for out, words in [(a_file / "x.wav", "is not a folder"), (tmp_path / "folder.wav", "is a folder"),
                       (tmp_path / "x.xyz", "Cannot tell the audio format")]:
        assert cli.main(base + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert loads == []  # said before any model loaded
    # the place fails only when the take is done: the take is kept elsewhere, and said where
    real, calls = core.audio.save_audio, []

    def fails_once(path, wav, sr):
        calls.append(path)
        if len(calls) == 1:
            raise core.audio.AudioError(f"Cannot save {path}: Read-only file system.", "Pick a place you can write to.")
        return real(path, wav, sr)

    monkeypatch.setattr(core.audio, "save_audio", fails_once)
    assert cli.main(base + ["--out", str(tmp_path / "take.wav")]) == 1
    err = capsys.readouterr().err
    kept = err.split("The take is kept at ")[1].strip().rstrip(".")
    assert "Read-only file system" in err and sf.info(kept).frames > 0


def test_a_stop_before_the_first_sentence_exits_130(tiny_models, tmp_path, capsys, monkeypatch):
    from contextlib import contextmanager

    @contextmanager
    def pressed_at_once():
        yield lambda: True

    monkeypatch.setattr(commands, "ctrl_c_finishes", pressed_at_once)
    assert cli.main(["say", "Hello there.", "--models", str(tiny_models), "--offline", "--voices", str(tmp_path / "v"),
                     "--out", str(tmp_path / "x.wav")]) == 130
    err = capsys.readouterr().err
    assert "Stopped before the first sentence was made; nothing was saved." in err and "error" not in err
    assert not (tmp_path / "x.wav").exists()


def test_record_refuses_a_taken_voice_name_before_recording(tmp_path, capsys):
    """--save-voice never saves over a voice, and says so before the user speaks for nothing."""
    out = tmp_path / "p.wav"
    for extra, says in [(["--save-voice", "paimon"], "A voice called 'paimon' already exists"),  # a bundled voice
                        (["--save-voice", "a/b"], "characters that are not allowed"),
                        (["--transcript", "hello"], "no --save-voice was given")]:  # else dropped unsaid
        assert cli.main(["record", "--out", str(out), *extra, "--voices", str(tmp_path / "v")]) == 2
        printed = capsys.readouterr()
        assert says in printed.err and "Traceback" not in printed.err, printed.err
        assert "Recording" not in printed.out
    assert not out.exists()


def test_download_command_messages(tiny_models, tmp_path, capsys, monkeypatch):
    assert cli.main(["download", "--models", str(tiny_models)]) == 0
    assert "already there" in capsys.readouterr().out
    assert cli.main(["download", "vallex", "vocos", "--models", str(tiny_models), "--offline"]) == 0
    assert "Already there: vallex, vocos." in capsys.readouterr().out  # nothing to fetch: not an error
    assert cli.main(["download", "--models", str(tmp_path), "--offline"]) == 2
    assert "--offline" in capsys.readouterr().err
    # a misspelt name is refused before anything starts, with the names there are
    assert cli.main(["download", "vocos", "bogus", "--models", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "Unknown model: bogus" in err and "vallex, vocos, encodec" in err and "vocos" not in out
    # HF_HUB_OFFLINE in the shell: say to unset it, not to run the command just run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["download", "asr", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "unset HF_HUB_OFFLINE" in err
    # the missing-weights message names the models folder in its command
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert cli.main(["say", "Hello.", "--models", str(tmp_path / "m"), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert f"python launch.py download vallex --models {tmp_path / 'm'}" in err and "unset HF_HUB_OFFLINE" in err


def test_a_device_this_torch_cannot_use_stops_the_launch_with_a_message(capsys):
    import torch

    bad = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:  # the server would start with a good one: each of these must stop first
        assert cli.main(["--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert ("Unknown device 'tpu'" if device == "tpu" else "no CUDA support") in err
        assert "--device cpu" in err


def test_ctrl_c_in_say_keeps_the_sentences_made(tiny_models, tmp_path):
    # the first Ctrl-C stops the take at once, and the sentences finished by then are still saved
    import re
    import signal

    text = " ".join(f"This is sentence number {i} of the long take." for i in range(60))
    out = tmp_path / "stopped.wav"
    proc = subprocess.Popen([sys.executable, "launch.py", "say", text, "--models", str(tiny_models), "--offline",
                             "--voices", str(tmp_path / "v"), "--out", str(out), "--seed", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:  # progress: "sentence i/N", one line each when not on a terminal
        err.append(line)
        if line.startswith("sentence 1/"):
            proc.send_signal(signal.SIGINT)
            break
    rest, more = proc.communicate(timeout=300)
    err = "".join(err) + more
    assert proc.returncode == 0, err
    assert "Stopping now; the sentences finished are kept" in err
    made = re.search(r"warning: stopped on request after (\d+) of (\d+) sentences", err)
    assert made and 1 <= int(made[1]) < int(made[2]), err
    assert f"Saved {out}" in rest and sf.info(out).frames > 0


def test_an_api_key_without_a_login_warns_that_the_page_stays_open(caplog):
    from app.server import ServerOptions, serve

    with socket.socket() as busy:  # the port is taken: serve stops right after its warnings
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        opts = ServerOptions(port=busy.getsockname()[1], api_key="k")
        with caplog.at_level("WARNING"), pytest.raises(StudioError, match="already in use"):
            serve(None, opts)
    assert "--api-key protects /v1 only" in caplog.text and "--auth" in caplog.text
    caplog.clear()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StudioError):
            serve(None, ServerOptions(port=busy.getsockname()[1], api_key="k", auth=[("a", "b")]))
    assert "--api-key protects" not in caplog.text


def test_help_shows_only_defaults_that_say_something(capsys):
    with pytest.raises(SystemExit):
        cli.main(["say", "--help"])
    out = capsys.readouterr().out
    assert "(default: )" not in out and "--instruction" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "models/ beside launch.py" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["say", "synth"])
def test_bad_options_are_said_before_any_model_is_needed(tmp_path, capsys, command):
    """--speed 0 with a --prompt: the option's error comes first, not after loading the models,
    transcribing and encoding the prompt (or, here, instead of "models missing")."""
    prompt = tmp_path / "me.wav"
    sf.write(prompt, np.zeros(24000, np.float32), 24000)
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello.\n")
    where = ["Hello.", "--out", str(tmp_path / "x.wav")] if command == "say" else \
        ["--text-file", str(lines), "--out-dir", str(tmp_path / "out")]
    code = cli.main([command, *where, "--prompt", str(prompt), "--transcript", "hello", "--speed", "0",
                     "--models", str(tmp_path / "no-models"), "--offline"])
    err = capsys.readouterr().err
    assert code != 0 and "speed 0.0" in err and "model" not in err.lower(), err


def _synth_args(tmp_path, *argv):
    return cli.build_parser().parse_args(["synth", *argv, "--out-dir", str(tmp_path / "o")])


def test_text_file_lines_are_numbered_as_an_editor_numbers_them(tmp_path):
    """Only \\n, \\r\\n and \\r end a line: a form feed (pdftotext's page break) or U+2028 inside a
    line must not shift every later line's output number."""
    f = tmp_path / "book.txt"
    f.write_text("Page one.\x0cPage two.\r\nLine two\u2028goes on.\rLine three.\n\nLine five.\n", newline="")
    jobs = commands.batch_jobs(_synth_args(tmp_path, "--text-file", str(f))).jobs
    assert [j.out.name for j in jobs] == ["0001.wav", "0002.wav", "0003.wav", "0005.wav"]
    assert jobs[1].text == "Line two\u2028goes on."
    f.write_text("\n".join(f"Line {i}." for i in range(1, 10000)) + "\n")  # 9999 lines: still 4 digits
    assert commands.batch_jobs(_synth_args(tmp_path, "--text-file", str(f))).jobs[-1].out.name == "9999.wav"


def test_text_inputs_of_the_wrong_kind_say_what_they_are(tmp_path):
    folder, lines = tmp_path / "texts", tmp_path / "lines.txt"
    folder.mkdir()
    lines.write_text("Hello.\n")
    (folder / "notes.md").write_text("Hello.")
    (folder / ".hidden.txt").write_text("Hello.")
    u16 = tmp_path / "u16.txt"
    u16.write_bytes("Hello there.\r\nSecond line.\r\n".encode("utf-16-le"))  # "Unicode" with no BOM
    for argv, want in [(["--text-file", str(folder)], "is a folder. .*use --in-dir"),
                       (["--in-dir", str(lines)], "is not a folder. .*--text-file"),
                       (["--in-dir", str(folder)], "There is no .txt file in"),
                       (["--text-file", str(u16)], "u16.txt looks like UTF-16 text without a byte-order")]:
        with pytest.raises(StudioError) as e:
            commands.batch_jobs(_synth_args(tmp_path, *argv))
        assert re.search(want, e.value.user_message()), e.value.user_message()
    # a pipe (/dev/stdin, <(...)) is a text file too, not "no text file"
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("From a pipe.\n",), daemon=True)
    writer.start()
    jobs = commands.batch_jobs(_synth_args(tmp_path, "--text-file", str(fifo))).jobs
    writer.join(10)
    assert [(j.text, j.out.name) for j in jobs] == [("From a pipe.", "0001.wav")]


@pytest.mark.parametrize("command", ["say", "synth"])
def test_an_unknown_voice_lists_the_voices_there_are(tmp_path, capsys, command):
    """The CLI has no "list": the message names the voices (the bundled ones here), not "pick one
    from the list"; said before any model is needed."""
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello.\n")
    where = ["Hello.", "--out", str(tmp_path / "x.wav")] if command == "say" else \
        ["--text-file", str(lines), "--out-dir", str(tmp_path / "out")]
    assert cli.main([command, *where, "--voice", "Paimon", "--models", str(tmp_path / "no-models"),
                     "--voices", str(tmp_path / "v"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "No saved voice called 'Paimon'. The voices are: " in err and "paimon" in err, err
    assert "from the list" not in err and "--prompt" in err


def test_a_too_long_instruction_is_said_once_before_any_model_is_needed(tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    lines.write_text("One.\nTwo.\nThree.\n")
    code = cli.main(["synth", "--text-file", str(lines), "--out-dir", str(tmp_path / "out"),
                     "--instruction", "slower " * 100, "--models", str(tmp_path / "no-models"), "--offline"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("the most is 500") == 1 and "weights" not in err.lower(), err
    assert not list((tmp_path / "out").iterdir())


class _FakeStudio:
    """Stands in for Studio where only the batch's bookkeeping is under test: every text 0.1 s."""

    def synthesize(self, text, voice=None, options=None):
        from types import SimpleNamespace

        return SimpleNamespace(audio=np.zeros(2400, np.float32), sample_rate=24000, warnings=[])


def test_an_interrupted_overwrite_batch_says_to_go_on_without_overwrite(tmp_path, capsys, monkeypatch):
    """Run again *with* --overwrite, the batch would make every finished file again."""
    lines = tmp_path / "lines.txt"
    lines.write_text("One.\nTwo.\nThree.\n")
    out = tmp_path / "out"
    argv = ["synth", "--text-file", str(lines), "--out-dir", str(out), "--offline"]
    monkeypatch.setattr(cli, "make_studio", lambda args: _FakeStudio())
    real = commands.write_atomic

    def interrupted(path, data):
        if path.name == "0002.wav":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(commands, "write_atomic", interrupted)
    assert cli.main(argv + ["--overwrite"]) == 130
    assert "run the same command again without --overwrite to make the rest" in capsys.readouterr().err
    assert cli.main(argv) == 130
    assert "run the same command again to make the rest" in capsys.readouterr().err

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commands, "write_atomic", disk_full)
    assert cli.main(argv + ["--overwrite"]) == 2
    assert "run the same command again without --overwrite: the files already made are kept" in \
        capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["0001.wav"]


@pytest.mark.parametrize("argv, empty", [
    (["say", "Hello.", "--out", " "], "--out"),  # not "just play it" (or "no audio device")
    (["say", "Hello.", "--out", "x.wav", "--prompt", ""], "--prompt"),  # not a voice made up
    (["synth", "--text-file", "LINES", "--out-dir", ""], "--out-dir"),  # not the current folder
    (["synth", "--in-dir", "", "--out-dir", "o"], "--in-dir"),  # not the current folder's .txt files
    (["synth", "--text-file", "", "--out-dir", "o"], "--text-file"),
    (["synth", "--text-file", "LINES", "--out-dir", "o", "--prompt", ""], "--prompt"),
])
def test_an_empty_path_option_is_refused_not_taken_as_here_or_as_left_out(tmp_path, capsys, monkeypatch,
                                                                         argv, empty):
    """`--out-dir "$DIR"` with DIR unset: "" is "." to a path (the current folder, written into or read
    from), and an empty --prompt was taken as no --prompt."""
    (tmp_path / "lines.txt").write_text("Hello.\n")
    (tmp_path / "here.txt").write_text("Hello.\n")
    monkeypatch.chdir(tmp_path)
    argv = [str(tmp_path / "lines.txt") if a == "LINES" else a for a in argv]
    assert cli.main([*argv, "--models", str(tmp_path / "no-models"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert f"error: {empty} is empty. Give {empty} " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.txt", "lines.txt"]  # nothing made here


def test_record_with_an_empty_voice_name_is_refused_before_recording(tmp_path, capsys):
    # --save-voice "$NAME" with NAME unset: not "record, and save no voice"
    for extra, says in [(["--save-voice", ""], "A voice needs a name"),
                        (["--save-voice", "", "--transcript", "hi"], "A voice needs a name")]:
        argv = ["record", "--out", str(tmp_path / "p.wav"), *extra, "--voices", str(tmp_path / "v")]
        assert cli.main(argv) == 2
        printed = capsys.readouterr()
        assert says in printed.err and "Recording" not in printed.out, printed.err


def test_ctrl_c_in_a_download_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    import core.store

    def interrupted(name, **kw):
        raise KeyboardInterrupt

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(core.store, "download_model", interrupted)
    assert cli.main(["download", "vocos", "--models", str(tmp_path / "m")]) == 130
    err = capsys.readouterr().err
    assert "interrupted in vocos" in err and "run the same command again" in err
