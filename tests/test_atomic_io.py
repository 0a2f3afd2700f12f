"""atomic_io: whole new content or the old file, never a half-written one; no temporary file left."""

import json
import os
import stat

import pytest

from semclip_jax import atomic_io


def _names(folder):
  return sorted(p.name for p in folder.iterdir())


def test_writes_content_and_leaves_only_the_target(tmp_path):
  atomic_io.write_text(str(tmp_path / "a.txt"), "first\n")
  atomic_io.write_text(str(tmp_path / "a.txt"), "second ünïcode\n")
  atomic_io.write_json(str(tmp_path / "b.json"), {"z": 1, "a": [2]}, indent=2, sort_keys=True)
  with atomic_io.open_replacing(str(tmp_path / "c.bin"), "wb") as f:
    f.write(b"\x00\xff")
  with atomic_io.replacing(str(tmp_path / "sub" / "d.bin")) as tmp:  # the folder is created
    assert os.path.dirname(tmp) == str(tmp_path / "sub") and tmp.endswith(".tmp")
    with open(tmp, "wb") as f:  # as a library writer (safetensors, ArrayRecord) would
      f.write(b"made elsewhere")
  assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "second ünïcode\n"
  assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "z": 1\n}'
  assert (tmp_path / "c.bin").read_bytes() == b"\x00\xff"
  assert (tmp_path / "sub" / "d.bin").read_bytes() == b"made elsewhere"
  assert _names(tmp_path) == ["a.txt", "b.json", "c.bin", "sub"]
  assert _names(tmp_path / "sub") == ["d.bin"]


@pytest.mark.parametrize("how", ["open_replacing", "replacing"])
def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, how):
  path = tmp_path / "config.json"
  path.write_text('{"old": true}')
  with pytest.raises(RuntimeError, match="disk full"):
    if how == "open_replacing":
      with atomic_io.open_replacing(str(path)) as f:
        f.write('{"new": ')  # half the content, then the writer fails
        raise RuntimeError("disk full")
    else:
      with atomic_io.replacing(str(path)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
          f.write('{"new": ')
        raise RuntimeError("disk full")
  assert json.loads(path.read_text()) == {"old": True}
  assert _names(tmp_path) == ["config.json"]
  with pytest.raises(TypeError):  # json.dump fails part-way: no new file appears either
    atomic_io.write_json(str(tmp_path / "new.json"), {"ok": 1, "bad": object()})
  assert _names(tmp_path) == ["config.json"]


def test_concurrent_writers_use_their_own_temporary_files(tmp_path):
  path = str(tmp_path / "out.txt")
  with atomic_io.replacing(path) as first, atomic_io.replacing(path) as second:
    assert first != second
    for tmp, text in ((first, "first"), (second, "second")):
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
  # The inner block (second) commits first; the outer one's rename wins, whole.
  assert (tmp_path / "out.txt").read_text() == "first"
  assert _names(tmp_path) == ["out.txt"]


def test_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
  events = []
  fsync, replace = os.fsync, os.replace

  def record_fsync(fd):
    events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
    fsync(fd)

  def record_replace(src, dst):
    events.append("rename")
    replace(src, dst)

  monkeypatch.setattr(os, "fsync", record_fsync)
  monkeypatch.setattr(os, "replace", record_replace)
  atomic_io.write_text(str(tmp_path / "a.txt"), "text")
  assert events == ["fsync file", "rename", "fsync folder"]


def test_new_files_get_the_usual_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    atomic_io.write_text(str(tmp_path / "a.txt"), "text")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644  # not mkstemp's 0o600


def test_a_writer_that_remakes_the_file_privately_still_gives_the_usual_permissions(tmp_path):
  """safetensors' save_file (and any writer replacing the temporary file) creates 0o600: the
  target still gets what open() gives a new file, as every other file of an export."""
  old = os.umask(0o022)
  try:
    with atomic_io.replacing(str(tmp_path / "model.safetensors")) as tmp:
      os.remove(tmp)
      os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "model.safetensors").st_mode) == 0o644


def test_remove_stray_temps_and_bad_mode(tmp_path):
  for name in ("triples-00000.array_record", "triples-00001.array_record.1a2b.tmp",
               "triples-00002.array_record.ffff.tmp", "progress.json.0c0c.tmp", "notes.tmp"):
    (tmp_path / name).write_text("x")
  removed = atomic_io.remove_stray_temps(str(tmp_path / "triples-*.array_record"))
  assert sorted(os.path.basename(p) for p in removed) == [
      "triples-00001.array_record.1a2b.tmp", "triples-00002.array_record.ffff.tmp"]
  assert _names(tmp_path) == ["notes.tmp", "progress.json.0c0c.tmp", "triples-00000.array_record"]
  with pytest.raises(ValueError, match="mode"):
    with atomic_io.open_replacing(str(tmp_path / "a.txt"), "a"):
      pass
  assert "a.txt" not in _names(tmp_path)
