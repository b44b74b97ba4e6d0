"""core.voices: reference .npz format, validation, safe names, atomic saves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.errors import VoiceError
from core.voices import Voice, VoiceLibrary, read_npz

ROOT = Path(__file__).resolve().parent.parent


def _voice(name="alice", frames=120, language="en", seed=0) -> Voice:
    rng = np.random.default_rng(seed)
    return Voice(name=name, audio_tokens=rng.integers(0, 1024, (frames, 8)), text_ids=list(rng.integers(0, 70, 30)),
                 language=language, transcript="hello there")


@pytest.fixture
def lib(tmp_path) -> VoiceLibrary:
    return VoiceLibrary(tmp_path / "voices", presets_dir=None)


def test_save_load_roundtrip_in_reference_format(lib):
    v = _voice(language="zh")
    lib.save(v)
    got = lib.load("alice")
    assert got.audio_tokens.dtype == np.int64 and got.audio_tokens.shape == (120, 8)
    np.testing.assert_array_equal(got.audio_tokens, v.audio_tokens)
    assert got.text_ids == [int(t) for t in v.text_ids]
    assert (got.language, got.transcript, got.created) == ("zh", "hello there", v.created)
    # The file is exactly the reference prompt layout, readable without pickle.
    with np.load(lib.root / "alice.npz", allow_pickle=False) as d:
        assert sorted(d.files) == ["audio_tokens", "lang_code", "text_tokens"]
        assert d["audio_tokens"].shape == (1, 120, 8) and d["text_tokens"].shape == (1, 30)
        assert int(d["lang_code"]) == 0  # prompt mapping: zh=0 (the model's id for zh is 1)


def test_list_rename_delete_export(lib):
    lib.save(_voice("a", language="en"))
    lib.save(_voice("b", language="ja"))
    assert sorted(v.name for v in lib.list()) == ["a", "b"]
    lib.rename("a", "c")
    assert sorted(v.name for v in lib.list()) == ["b", "c"]
    assert lib.load("c").transcript == "hello there" and not (lib.root / "a.json").exists()
    with pytest.raises(VoiceError, match="already exists"):
        lib.rename("b", "c")
    path = lib.export_npz("c")
    assert read_npz(path)[2] == "en"
    lib.delete("c")
    assert [v.name for v in lib.list()] == ["b"]
    with pytest.raises(VoiceError, match="No saved voice"):
        lib.load("c")


def test_import_reference_presets(lib, golden):
    for npz in sorted((golden / "presets").glob("*.npz")):
        v = lib.import_npz(npz)
        assert v.audio_tokens.ndim == 2 and v.audio_tokens.shape[1] == 8
    babara = lib.load("babara")  # int64 lang_code in this one file
    assert babara.language == "zh" and babara.audio_tokens.shape == (162, 8) and len(babara.text_ids) == 46
    assert lib.load("alan").language == "ja" and lib.load("acou_1").language == "en"
    with pytest.raises(VoiceError, match="already exists"):
        lib.import_npz(golden / "presets" / "alan.npz")


def _write(path: Path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = dict(audio_tokens=np.zeros((1, 10, 8), np.int64), text_tokens=np.ones((1, 5), np.int64),
            lang_code=np.array(2))


@pytest.mark.parametrize("change, match", [
    ({"audio_tokens": np.zeros((10, 8), np.int64)}, "shape"),
    ({"audio_tokens": np.zeros((1, 10, 4), np.int64)}, "shape"),
    ({"audio_tokens": np.zeros((1, 0, 8), np.int64)}, "shape"),
    ({"audio_tokens": np.full((1, 10, 8), 1024, np.int64)}, "0..1023"),
    ({"audio_tokens": np.zeros((1, 10, 8), np.float32)}, "dtype"),
    ({"text_tokens": np.full((1, 5), 70, np.int64)}, "0..69"),
    ({"text_tokens": np.ones((5,), np.int64)}, "shape"),
    ({"lang_code": np.array(3)}, "lang_code"),
    ({"lang_code": np.array(1.0)}, "dtype"),
])
def test_malformed_files_are_rejected(tmp_path, lib, change, match):
    path = _write(tmp_path / "bad.npz", **{**GOOD, **change})
    with pytest.raises(VoiceError, match=match):
        lib.import_npz(path)
    assert lib.list() == []


def test_missing_keys_pickles_and_junk_are_rejected(tmp_path, lib):
    with pytest.raises(VoiceError, match="missing lang_code"):
        lib.import_npz(_write(tmp_path / "k.npz", audio_tokens=GOOD["audio_tokens"], text_tokens=GOOD["text_tokens"]))
    pickled = _write(tmp_path / "p.npz", **{**GOOD, "lang_code": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(VoiceError, match="pickled"):
        lib.import_npz(pickled)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(VoiceError, match="not a readable"):
        lib.import_npz(junk)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(_write(tmp_path / "ok.npz", **GOOD).read_bytes()[:200])
    with pytest.raises(VoiceError):
        lib.import_npz(truncated)


def _npy(shape, dtype="<i8", data=b"") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def test_damaged_compressed_cut_or_huge_files_are_voice_errors_and_skipped_in_lists(tmp_path, lib):
    """Bytes flipped inside a compressed .npz (zlib), an array cut short, and a header that claims
    10^10 frames: each a VoiceError naming the file, never a crash; listing skips them."""
    import zipfile

    flipped = tmp_path / "flipped.npz"
    np.savez_compressed(flipped, **GOOD)
    data = bytearray(flipped.read_bytes())
    for i in range(200, 400):
        data[i] ^= 0x55
    flipped.write_bytes(bytes(data))
    cut, huge = tmp_path / "cut.npz", tmp_path / "huge.npz"
    for path, audio in [(cut, _npy(GOOD["audio_tokens"].shape, data=GOOD["audio_tokens"].astype("<i8").tobytes()[:100])),
                        (huge, _npy((1, 10_000_000_000, 8)))]:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("audio_tokens.npy", audio)
            z.writestr("text_tokens.npy", _npy(GOOD["text_tokens"].shape, data=GOOD["text_tokens"].astype("<i8").tobytes()))
            z.writestr("lang_code.npy", _npy(GOOD["lang_code"].shape, data=GOOD["lang_code"].astype("<i8").tobytes()))
    for path, want in [(flipped, "flipped.npz is damaged"), (cut, "cut.npz is damaged: audio_tokens holds 100 bytes"),
                       (huge, "huge.npz: audio_tokens has shape \\[1, 10000000000, 8\\], far larger")]:
        with pytest.raises(VoiceError, match=want):
            read_npz(path)
        with pytest.raises(VoiceError, match=want):
            lib.import_npz(path)
    lib.save(_voice("kept"))
    for path in (flipped, cut, huge):
        (lib.root / path.name).write_bytes(path.read_bytes())
    assert [v.name for v in lib.list()] == ["kept"]


@pytest.mark.parametrize("name", ["", "   ", "../evil", "a/b", "a\\b", "/etc/passwd", ".hidden", "nul\x00x",
                                  "x" * 101, "..", "tab\tname", None])
def test_unsafe_names_are_rejected(lib, tmp_path, name):
    with pytest.raises(VoiceError):
        lib.save(_voice(name))
    assert not any(tmp_path.rglob("*.npz"))


def test_unicode_names_are_fine(lib):
    lib.save(_voice("派蒙 voice-2"))
    assert lib.load("派蒙 voice-2").name == "派蒙 voice-2"


def test_failed_write_keeps_the_old_version(lib, monkeypatch):
    lib.save(_voice(seed=1))
    before = (lib.root / "alice.npz").read_bytes()

    def crash(src, dst):
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(VoiceError, match=r"Cannot save the voice 'alice': the voices folder .* failed \(disk unplugged\)"):
        lib.save(_voice(seed=2))
    monkeypatch.undo()
    assert (lib.root / "alice.npz").read_bytes() == before
    assert sorted(p.name for p in lib.root.iterdir()) == ["alice.json", "alice.npz"]  # no temp files left


_SAVER = """
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from core.voices import Voice, VoiceLibrary
lib = VoiceLibrary(sys.argv[2], presets_dir=None)
i = 0
print("ready", flush=True)
while True:
    i += 1
    tokens = np.full((9000, 8), i % 1000, dtype=np.int64)
    lib.save(Voice("big", tokens, [i % 70] * 50, "en", transcript=f"version {i}"))
"""


def test_kill_mid_save_loses_nothing(lib):
    lib.save(Voice("big", np.zeros((9000, 8), np.int64), [0] * 50, "en", transcript="version 0"))
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(ROOT), str(lib.root)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.6)  # several saves of ~0.6 MB each are under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    v = lib.load("big")  # whatever version won, it is complete and consistent
    assert v.audio_tokens.shape == (9000, 8)
    value = int(v.audio_tokens[0, 0])
    assert (v.audio_tokens == value).all() and all(t == value % 70 for t in v.text_ids)
    assert [x.name for x in lib.list()] == ["big"]


def test_a_user_voice_cannot_take_a_bundled_voice_name(tmp_path):
    from core.voices import PRESETS_DIR

    lib = VoiceLibrary(tmp_path / "voices")  # with the bundled presets
    for attempt in (lambda: lib.save(_voice("paimon")), lambda: lib.save(_voice("paimon"), overwrite=False),
                    lambda: lib.import_npz(PRESETS_DIR / "alan.npz")):
        with pytest.raises(VoiceError, match="is the name of a bundled voice"):
            attempt()
    lib.save(_voice("mine"))
    with pytest.raises(VoiceError, match="is the name of a bundled voice"):
        lib.rename("mine", "cafe")
    assert lib.load("paimon").preset and lib.load("cafe").preset and lib.load("mine").name == "mine"
    with pytest.raises(VoiceError, match="already exists"):  # and an existing user voice is kept
        lib.save(_voice("mine", seed=5), overwrite=False)


def test_folder_problems_and_damaged_files_are_voice_errors(lib, tmp_path):
    # a name's length is counted in bytes too: 80 CJK characters would not fit in a file name
    with pytest.raises(VoiceError, match="240 bytes long as a file name"):
        lib.save(_voice(name="中" * 80))
    lib.save(_voice(name="中" * 60))
    # a damaged file is left out of the list, but it holds its name: saving over it says which file to delete
    (lib.root / "broken.npz").write_bytes(b"PK not really a zip")
    assert "broken" not in [v.name for v in lib.list()]
    with pytest.raises(VoiceError, match=r"taken by a damaged voice file, .*broken\.npz") as e:
        lib.save(_voice(name="broken"), overwrite=False)
    assert "Delete that file" in e.value.user_message()
    with pytest.raises(VoiceError, match=r"The voice 'broken' is damaged") as e:
        lib.load("broken")
    assert str(lib.root / "broken.npz") in e.value.user_message()
    # the voices folder is a file: said so, for saving and for listing
    afile = tmp_path / "afile"
    afile.write_text("x")
    bad = VoiceLibrary(afile, presets_dir=None)
    with pytest.raises(VoiceError, match="it is a file, not a folder") as e:
        bad.save(_voice())
    assert "--voices" in e.value.user_message()
    assert bad.list() == []


def test_a_rename_onto_a_taken_name_changes_nothing(lib):
    lib.save(_voice("alice", seed=1))
    lib.save(_voice("bob", seed=2))
    with pytest.raises(VoiceError, match="already exists"):
        lib.rename("alice", "bob")
    assert sorted(p.name for p in lib.root.iterdir()) == ["alice.json", "alice.npz", "bob.json", "bob.npz"]
    assert lib.rename("alice", "carol").name == "carol"
    assert sorted(p.name for p in lib.root.iterdir()) == ["bob.json", "bob.npz", "carol.json", "carol.npz"]
    assert lib.load("carol").transcript == "hello there"


def test_two_processes_saving_one_new_name_at_once_one_is_refused(tmp_path):
    """overwrite=False claims the name atomically: of two savers racing for it, exactly one wins."""
    from pathlib import Path

    script = textwrap.dedent("""
        import sys, time, numpy as np
        sys.path.insert(0, sys.argv[1])
        from core.errors import VoiceError
        from core.voices import Voice, VoiceLibrary
        lib = VoiceLibrary(sys.argv[2], presets_dir=None)
        start = float(sys.argv[3])
        while time.time() < start:
            pass
        v = Voice("same", np.full((50, 8), int(sys.argv[4])), [1, 2, 3], "en", transcript=sys.argv[4])
        try:
            lib.save(v, overwrite=False)
            print("saved")
        except VoiceError:
            print("refused")
    """)
    root = Path(__file__).resolve().parent.parent
    for attempt in range(3):
        voices = tmp_path / f"v{attempt}"
        start = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(voices), str(start), str(k)],
                                  stdout=subprocess.PIPE, text=True) for k in (1, 2)]
        outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert outs == ["refused", "saved"], outs
        saved = VoiceLibrary(voices, presets_dir=None).load("same")
        assert saved.transcript == str(int(saved.audio_tokens[0, 0]))  # the npz and its metadata agree


def test_without_hard_links_a_new_name_is_still_claimed_once(lib, monkeypatch):
    """FAT drives and some network shares have no hard links: saving and renaming fall back to
    claiming the name with an exclusive create, and still never write over a voice."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    lib.save(_voice("alice", seed=1), overwrite=False)
    with pytest.raises(VoiceError, match="already exists"):
        lib.save(_voice("alice", seed=2), overwrite=False)
    lib.save(_voice("bob", seed=3), overwrite=False)
    with pytest.raises(VoiceError, match="already exists"):
        lib.rename("alice", "bob")
    assert lib.rename("alice", "carol").name == "carol"
    assert sorted(p.name for p in lib.root.iterdir()) == ["bob.json", "bob.npz", "carol.json", "carol.npz"]
    assert lib.load("carol").audio_tokens.tolist() == _voice(seed=1).audio_tokens.tolist()


def test_a_rename_that_fails_midway_leaves_the_old_voice(lib, monkeypatch):
    import errno

    lib.save(_voice("alice", seed=1))
    before = sorted(p.name for p in lib.root.iterdir())

    def full(voice):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lib, "_write_meta", full)
    with pytest.raises(VoiceError, match=r"Cannot rename the voice 'alice'.*No space left on device"):
        lib.rename("alice", "zoe")
    assert sorted(p.name for p in lib.root.iterdir()) == before
    assert lib.load("alice").transcript == "hello there"


@pytest.mark.parametrize("name", ["a\u200bb", "\u202e", "\ufeff", "a\u2028b", "a\x85b", "a\ud800", "\u00ad"])
def test_invisible_control_and_unwritable_characters_in_names_are_voice_errors(lib, tmp_path, name):
    # zero-width and bidi marks make names that look like others (or like nothing); a lone surrogate
    # cannot be a file name at all (it was a UnicodeEncodeError)
    for call in (lambda: lib.save(_voice(name)), lambda: lib.rename("x", name)):
        with pytest.raises(VoiceError, match="invisible or control characters"):
            call()
        lib.save(_voice("x"))
    with pytest.raises(VoiceError):  # no such voice (or, for a control character, no such name)
        lib.load(name)
    assert sorted(p.name for p in tmp_path.rglob("*.npz")) == ["x.npz"]


def test_a_voice_saved_before_under_an_invisible_mark_still_loads_and_deletes(lib):
    from core.voices import write_npz

    lib.root.mkdir(parents=True, exist_ok=True)
    write_npz(lib.root / "a\u200bb.npz", _voice("a\u200bb"))
    assert [v.name for v in lib.list()] == ["a\u200bb"] and lib.load("a\u200bb").language == "en"
    assert lib.rename("a\u200bb", "ab").name == "ab"  # and it can be given a visible name
    lib.delete("ab")
    assert lib.list() == []


def test_emoji_with_joiners_is_still_a_name(lib):
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467 voices"
    assert lib.save(_voice(family)).name == family and lib.load(family).name == family


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "5", "null"])
def test_metadata_that_is_not_an_object_is_ignored_not_fatal(lib, meta):
    """A .json beside a good .npz that is valid JSON but not an object took load() and the whole
    list() down with an AttributeError."""
    lib.save(_voice("alice"))
    lib.save(_voice("bob"))
    (lib.root / "alice.json").write_text(meta)
    voice = lib.load("alice")
    assert voice.transcript == "" and voice.created  # the file's time
    assert sorted(v.name for v in lib.list()) == ["alice", "bob"]


def test_null_metadata_fields_are_empty_not_the_word_none(lib):
    lib.save(_voice("alice"))
    (lib.root / "alice.json").write_text('{"transcript": null, "created": null}')
    voice = lib.load("alice")
    assert voice.transcript == "" and voice.created.startswith("20")


@pytest.mark.parametrize("bad", [None, "alice", 42])
def test_saving_what_is_not_a_voice_is_a_voice_error(lib, bad):
    with pytest.raises(VoiceError, match="Only a Voice can be saved"):
        lib.save(bad)


@pytest.mark.parametrize("text_ids,match", [(None, "dtype object"), (["a", "b"], "expected integers"),
                                            ([1.5, 2.7], "expected integers"), ([[1, 2], [3]], "unreadable")])
def test_unreadable_phoneme_ids_are_refused_not_crashed_or_rounded(lib, text_ids, match):
    # None / strings were a TypeError / ValueError; [1.5, 2.7] was saved silently as [1, 2]
    with pytest.raises(VoiceError, match=match):
        lib.save(Voice("odd", np.zeros((10, 8), np.int64), text_ids, "en"))
    assert not lib.root.exists() or not any(lib.root.iterdir())


def test_two_threads_saving_one_name_never_leave_a_mixed_voice(lib, monkeypatch):
    """A save writes the .npz, then the .json: a second save of the name in between left the first
    one's transcript beside the second one's codes."""
    import threading

    import core.voices as voices

    first_npz_written, second_done = threading.Event(), threading.Event()
    write_npz = voices.write_npz

    def slow_first(path, voice, overwrite=True):
        write_npz(path, voice, overwrite)
        if voice.transcript == "first":  # let the other save run to the end before this one's .json
            first_npz_written.set()
            second_done.wait(1.0)

    monkeypatch.setattr(voices, "write_npz", slow_first)
    first = Voice("same", np.full((20, 8), 1, np.int64), [1, 2, 3], "en", transcript="first")
    second = Voice("same", np.full((20, 8), 2, np.int64), [4, 5, 6], "en", transcript="second")
    t = threading.Thread(target=lib.save, args=(first,))
    t.start()
    assert first_npz_written.wait(10)
    saver = threading.Thread(target=lambda: (lib.save(second), second_done.set()))
    saver.start()
    t.join(10)
    saver.join(10)
    voice = lib.load("same")
    kept = {1: ("first", [1, 2, 3]), 2: ("second", [4, 5, 6])}[int(voice.audio_tokens[0, 0])]
    assert (voice.transcript, voice.text_ids) == kept
