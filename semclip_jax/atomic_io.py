"""Atomic file writes: a reader sees the old file or the new one, whole, even across a power cut.

Every writer here works on a fresh temporary file beside the target (same folder, so the final
`os.replace` is a rename within one filesystem), syncs it, renames it onto the target and syncs
the folder, so that the rename itself is durable. Temporary names are `<target>.<random>.tmp`,
created exclusively: concurrent writers of one target never share a temporary file, and the last
rename wins. A write that raises removes its temporary file and leaves the target untouched.

- `replacing(path)`: yields the temporary path, for writers that make their own file
  (`safetensors.numpy.save_file`, `ArrayRecordWriter`);
- `open_replacing(path, mode)`: yields an open file;
- `write_text(path, text)`, `write_json(path, value, **json_dump_options)`;
- `remove_stray_temps(pattern)`: deletes what writes killed mid-way left behind.

A remote target (`gs://`, see `storage`) is written to a local temporary file first and then
uploaded as one object, which the store makes visible only when the upload is complete: the same
guarantee, and nothing is ever left behind in the bucket.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import stat
import tempfile
from typing import IO, Any, Iterator

from semclip_jax import storage

TEMP_SUFFIX = ".tmp"


def _new_temp(path: str) -> str:
  """Creates an empty, new file `<path>.<random>.tmp` and returns its name."""
  while True:
    tmp = f"{path}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:  # O_EXCL: the name is ours alone. Mode 0o666 minus the umask, as open() would give the
      # target (tempfile.mkstemp's 0o600 would make model folders and configs private).
      os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return tmp
    except FileExistsError:
      continue


def _fsync(path: str) -> None:
  """Flushes a file's (or a folder's) data to the disk."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _remove(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a new temporary path beside `path` (its folder is created if missing); when the block
  ends normally, the file written there is synced and renamed onto `path`. When it raises, the
  temporary file is removed and `path` is untouched."""
  if storage.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="semclip_upload_") as staging:
      tmp = os.path.join(staging, storage.basename(path))
      yield tmp
      storage.upload(tmp, path)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = _new_temp(path)
  mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what open() would give a new file (0o666 - umask)
  try:
    yield tmp
    # A writer that made its own file in place of ours (safetensors' save_file creates 0o600)
    # must not make the target private to us: teammates read exports on shared filesystems.
    os.chmod(tmp, mode)
    _fsync(tmp)  # the data first: a rename that outlives a crash must not point at lost blocks
    os.replace(tmp, path)
  except BaseException:  # KeyboardInterrupt too: never leave a temporary file behind
    _remove(tmp)
    raise
  _fsync(folder)  # the rename itself (a directory entry) is durable only once the folder is


@contextlib.contextmanager
def open_replacing(path: str, mode: str = "w", *, encoding: str | None = "utf-8",
                   newline: str | None = None) -> Iterator[IO]:
  """`open(path, mode)` for writing, atomically (see `replacing`). mode: "w" or "wb"."""
  if mode not in ("w", "wb"):
    raise ValueError(f"open_replacing writes a whole new file: mode 'w' or 'wb', not {mode!r}")
  binary = mode == "wb"
  with replacing(path) as tmp:
    with open(tmp, mode, encoding=None if binary else encoding,
              newline=None if binary else newline) as f:
      yield f


def write_text(path: str, text: str, *, encoding: str = "utf-8") -> None:
  """Writes `text` to `path` atomically."""
  with open_replacing(path, encoding=encoding) as f:
    f.write(text)


def write_json(path: str, value: Any, **options: Any) -> None:
  """Writes `json.dump(value, f, **options)` to `path` atomically."""
  with open_replacing(path) as f:
    json.dump(value, f, **options)


def remove_stray_temps(pattern: str) -> list[str]:
  """Deletes the temporary files of the targets matching the glob `pattern` (what a killed
  writer left) and returns their names. Only for a folder no other process is writing to.
  Remote targets never have any (their temporary files are local)."""
  if storage.is_remote(pattern):
    return []
  strays = glob.glob(f"{pattern}.*{TEMP_SUFFIX}")
  for stray in strays:
    _remove(stray)
  return strays
