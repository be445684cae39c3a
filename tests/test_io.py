"""The shared file and terminal helpers (transformer/_io.py): read_json's errors name the file,
atomic_output never leaves a half-written file or a temporary one, Progress prints on stderr
once per interval and its last line once."""
import io
import os
import pathlib

import numpy as np
import pytest

from transformer._io import Progress, atomic_output, atomic_path, read_json


def test_read_json_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json(good) == {"a": [1, 2]}
    cases = {"bad.json": (b"{not json", "not valid JSON"),
             "latin1.json": (b'{"a": "\xe9"}', "not valid UTF-8"),
             "deep.json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
             "list.json": (b"[1, 2]", "expected a JSON object, got a JSON list")}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message) as e:
            read_json(tmp_path / name, "JSON object")
        assert name in str(e.value)
    assert read_json(tmp_path / "list.json", "JSON list", list) == [1, 2]
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def test_atomic_path_renames_a_whole_file_or_folder_or_nothing(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"previous")
    (tmp_path / "model.tmp").mkdir()                    # left by a run cut short
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            os.mkdir(tmp)
            pathlib.Path(tmp, "half.bin").write_bytes(b"half")
            raise RuntimeError("interrupted mid-conversion")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(out) == ["old.bin"]
    with atomic_path(out) as tmp:                       # a folder replaces the folder whole
        os.mkdir(tmp)
        pathlib.Path(tmp, "new.bin").write_bytes(b"new")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(out) == ["new.bin"]
    with atomic_path(tmp_path / "file.onnx") as tmp:    # a file
        pathlib.Path(tmp).write_text("graph")
    assert sorted(os.listdir(tmp_path)) == ["file.onnx", "model"]
    with pytest.raises(FileNotFoundError):              # the writer wrote nothing
        with atomic_path(tmp_path / "nothing"):
            pass
    assert sorted(os.listdir(tmp_path)) == ["file.onnx", "model"]


def test_atomic_output_writes_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "out.npy"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_output(out, "wb") as f:
            f.write(b"half")
            raise RuntimeError("interrupted mid-write")
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.npy"]

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        with atomic_output(out, "wb") as f:
            f.write(b"all of it")
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.npy"]
    monkeypatch.undo()
    with atomic_output(out, "wb") as f:
        np.save(f, np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(np.load(out), np.arange(3, dtype=np.float32))
    with atomic_output(tmp_path / "text.txt") as f:  # text mode: UTF-8
        f.write("آ ت ز\n")
    assert (tmp_path / "text.txt").read_bytes() == "آ ت ز\n".encode("utf-8")
    assert sorted(os.listdir(tmp_path)) == ["out.npy", "text.txt"]
    with pytest.raises(ValueError, match="mode"):
        atomic_output(out, "a")
    with pytest.raises(OSError):  # a missing folder: nothing is created
        with atomic_output(tmp_path / "no" / "such" / "dir.txt") as f:
            f.write("x")


def test_progress_prints_each_interval_and_the_last_line_once(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("transformer._io.time.monotonic", lambda: clock[0])
    log = io.StringIO()  # not a terminal: a line at most every 10 s, and the last
    show = Progress("embed", 1000, stream=log)
    clock[0] += 1
    show(100)
    assert log.getvalue() == ""
    clock[0] += 10
    show(500)
    assert log.getvalue() == "embed: 500/1000 lines, 45.5 lines/s, ETA 0:00:11\n"
    clock[0] += 1
    show(1000)
    show(1000, final=True)  # already reported: not repeated
    assert log.getvalue().splitlines()[1:] == ["embed: 1000/1000 lines, 83.3 lines/s"]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()  # a terminal: updated in place, the total learned from the callback
    show = Progress("index", stream=tty)
    clock[0] += 1
    show(2, 4)
    show(4, 4)
    assert tty.getvalue() == "\rindex: 2/4 lines, 2.0 lines/s, ETA 0:00:01" \
                             "\rindex: 4/4 lines, 4.0 lines/s\n"
    stdin = io.StringIO()  # total unknown (stdin): '?', no ETA, the end said by final=True
    show = Progress("translate", stream=stdin)
    clock[0] += 2
    show(7, final=True)
    assert stdin.getvalue() == "translate: 7/? lines, 3.5 lines/s\n"
