"""The path layer against a real GCS emulator (fake-gcs-server on 127.0.0.1) and local folders."""

import os

import pytest

from semclip_jax import atomic_io, storage


def test_schemes_it_cannot_open_are_refused_naming_the_setting():
  assert storage.check("runs/a", "workdir") == "runs/a"
  assert storage.check("gs://b/run") == "gs://b/run"
  with pytest.raises(storage.UnsupportedPathError, match=r"workdir: 's3://b/r'.*'s3://'"):
    storage.check("s3://b/r", "workdir")
  with pytest.raises(storage.UnsupportedPathError, match="not a gs://bucket/path"):
    storage.check("gs:/b/r", "--output_dir")
  assert not storage.is_remote("C:/data") and storage.scheme("C:/data") == ""


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_files_folders_and_atomic_writes(where, tmp_path, request):
  root = (request.getfixturevalue("gcs_bucket") + "/run" if where == "gcs"
          else str(tmp_path / "run"))
  storage.makedirs(root)
  target = storage.join(root, "sub", "config.json")
  atomic_io.write_json(target, {"a": 1})
  assert storage.read_text(target) == '{"a": 1}'
  assert storage.isfile(target) and storage.isdir(storage.join(root, "sub"))
  assert storage.listdir(root) == ["sub"]
  with pytest.raises(RuntimeError), atomic_io.open_replacing(target) as f:
    f.write("half")
    raise RuntimeError("killed mid-write")
  assert storage.read_text(target) == '{"a": 1}'  # untouched, and no temporary file beside it
  assert storage.listdir(storage.join(root, "sub")) == ["config.json"]
  with storage.writing_folder(storage.join(root, "hf")) as folder:
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
      f.write(b"\0" * 1000)
    os.makedirs(os.path.join(folder, "tok"))
    with open(os.path.join(folder, "tok", "vocab.json"), "w", encoding="utf-8") as f:
      f.write("{}")
  assert storage.glob(storage.join(root, "hf"), "*.bin") == [storage.join(root, "hf", "weights.bin")]
  with storage.local_folder_copy(storage.join(root, "hf")) as local:
    assert sorted(os.listdir(local)) == ["tok", "weights.bin"]
    assert os.path.getsize(os.path.join(local, "weights.bin")) == 1000
  with storage.local_copy(storage.join(root, "hf", "tok", "vocab.json")) as local:
    assert open(local, encoding="utf-8").read() == "{}"
  appended = storage.RewrittenObject(storage.join(root, "log.txt")) if where == "gcs" else None
  if appended:
    appended.write("one\n")
    appended.flush()
    again = storage.RewrittenObject(storage.join(root, "log.txt"))  # a resumed writer appends
    again.write("two\n")
    again.close()
    assert storage.read_text(storage.join(root, "log.txt")) == "one\ntwo\n"
  storage.rmtree(storage.join(root, "hf"))
  assert not storage.exists(storage.join(root, "hf", "weights.bin"))


def test_cached_local_copy_follows_the_object(gcs_bucket, tmp_path):
  shard = f"{gcs_bucket}/shards/a.array_record"
  with storage.open(shard, "wb") as f:
    f.write(b"first")
  [local] = storage.cached_local_copy([shard], str(tmp_path))
  assert open(local, "rb").read() == b"first"
  assert storage.cached_local_copy([shard], str(tmp_path)) == [local]
  with storage.open(shard, "wb") as f:  # the same name, new content (a re-prepared shard)
    f.write(b"secnd")
  assert open(storage.cached_local_copy([shard], str(tmp_path))[0], "rb").read() == b"secnd"
  assert storage.cached_local_copy(["/x/local"], str(tmp_path)) == ["/x/local"]


def _full_disk_error() -> OSError:
  """A real ENOSPC: /dev/full refuses every write as a full disk does."""
  try:
    with open("/dev/full", "wb", buffering=0) as f:
      f.write(b"x")
  except OSError as e:
    return e
  raise AssertionError("/dev/full accepted a write")


def test_out_of_space_is_found_anywhere_in_an_error_chain():
  full = _full_disk_error()
  assert storage.out_of_space(full) == "No space left on device"
  named = OSError(full.errno, full.strerror, "/run/metrics.jsonl")
  assert storage.out_of_space(named) == "No space left on device writing /run/metrics.jsonl"
  try:  # the cleanup after a failed write fails in turn: the first failure is still found
    try:
      raise named
    except OSError:
      raise RuntimeError("Event loop is closed")  # pylint: disable=raise-missing-from
  except RuntimeError as e:
    assert storage.out_of_space(e) == "No space left on device writing /run/metrics.jsonl"
  # tensorstore (orbax's array writes) names the file and the OS error in a ValueError's text
  tensorstore = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "/c/4.tmp/":'
      ' Failed writing: "/c/4.tmp/d/be75": Failed to write 177240 bytes to file 7: No space left '
      "on device [os_error_code='28']")
  assert storage.out_of_space(RuntimeError("save failed")) is None
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = tensorstore
  assert storage.out_of_space(wrapped) == "No space left on device writing /c/4.tmp/d/be75"
  assert storage.out_of_space(ExceptionGroup("saves", [ValueError("x"), named])) == (
      "No space left on device writing /run/metrics.jsonl")
  assert storage.out_of_space(OSError(13, "Permission denied", "/run")) is None
