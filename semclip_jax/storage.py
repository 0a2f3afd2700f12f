"""One path layer for every file the project reads or writes: local paths and `gs://` objects.

A path is a string: a local path (relative or absolute) or `gs://bucket/key`. Local paths go to
`os` and `open` as they always did; `gs://` paths go to fsspec's `gcsfs` (the backend etils.epath
itself uses for `gs://` inside orbax, so checkpoints and everything else share one client and
its credentials: Application Default Credentials, or `STORAGE_EMULATOR_HOST` for an emulator).
Any other `scheme://` (and a `gs:/` that lost a slash) is refused by `check` with one line that
names the setting, never turned into a local folder named `gs:`.

Object stores have no folders, no appends and no renames. What replaces them:
- folders are key prefixes: `makedirs` does nothing for `gs://`, `isdir` means "some key starts
  with `<path>/`";
- a whole-file write is one object upload, which GCS makes visible only when complete: that is the
  atomic write `atomic_io` builds on (its local files still go through write, fsync, rename);
- appends (`metrics.jsonl`, TensorBoard events) rewrite the whole object (`RewrittenObject`);
- libraries that only take local file names (safetensors, ArrayRecord's reader, transformers'
  `save_pretrained`) work on a local copy: `local_copy` / `local_folder_copy` download,
  `writing_folder` uploads a folder written locally, `cached_local_copy` keeps a checked copy of a
  bucket's shards on the host's disk.

Names read from data files (an image column) are untrusted: `join_inside` keeps them inside their
folder (local: after following symlinks; gs://: by normalising the key, objects have no links) and
`read_regular_file` reads regular files only, never a FIFO (which blocks) or a device (endless).
`content_identity` tells whether an input file changed (prepare's resume). `out_of_space` finds a
full disk (or quota, or file size limit) in an error, wherever in its chain it was raised.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fnmatch
import hashlib
import os
import posixpath
import re
import secrets
import shutil
import stat
import tempfile
import time
from typing import IO, Any, Iterator, Sequence

REMOTE_SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


class UnsupportedPathError(ValueError):
  """A path whose scheme the layer cannot open (the message names it and its setting)."""


def scheme(path: str) -> str:
  """"gs" for `gs://...`, "" for a local path (another `scheme://` is returned as well)."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match and len(match.group(1)) > 1 else ""  # "C:/" is local


def is_remote(path: str) -> bool:
  return scheme(path) in REMOTE_SCHEMES


def check(path: str, what: str = "path") -> str:
  """Returns `path` when this layer can open it; raises UnsupportedPathError naming `what`."""
  path = os.fspath(path)
  kind = scheme(path)
  if not kind:
    return path
  if kind not in REMOTE_SCHEMES:
    raise UnsupportedPathError(
        f"{what}: {path!r}: the scheme '{kind}://' is not supported (local paths and gs:// are)")
  if not path.startswith(f"{kind}://") or len(path) <= len(f"{kind}://"):
    raise UnsupportedPathError(f"{what}: {path!r} is not a {kind}://bucket/path URL")
  return path


class OutsideFolderError(ValueError):
  """A name from a data file that leads outside the folder it must stay in."""


class NotRegularFileError(OSError):
  """A path naming something other than a regular file: a FIFO, a device, a folder."""


def _fs(path: str):
  """The fsspec filesystem of a remote path (cached by fsspec per process, fork-safe)."""
  import fsspec  # pylint: disable=import-outside-toplevel

  # No listings cache: other hosts write the same bucket, and a stale listing would hide their
  # files (a checkpoint, a shard) from `exists`/`listdir` here.
  return fsspec.filesystem(scheme(path), use_listings_cache=False)


def join(base: str, *parts: str) -> str:
  """os.path.join for local paths; `/`-joined keys for remote ones."""
  if not is_remote(base):
    return os.path.join(base, *parts)
  return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def absolute(path: str) -> str:
  """os.path.abspath for local paths; remote ones are absolute already."""
  return path if is_remote(path) else os.path.abspath(path)


def normpath(path: str) -> str:
  """os.path.normpath for local paths; remote ones lose a trailing slash (and keep their `//`)."""
  return path.rstrip("/") if is_remote(path) else os.path.normpath(path)


def join_inside(folder: str, name: str) -> str:
  """The path of `name` (read from a data file: untrusted) in `folder`, which it must not leave:
  an absolute `name`, `..` leading out, or a symlink resolving outside raises OutsideFolderError
  naming both. Local paths are compared after os.path.realpath, of `folder` too (a folder that is
  itself a link is fine, a link inside it to elsewhere is not), and the resolved path is returned;
  a gs:// `name` is normalised as a key ('..' and '.' resolved on '/'), objects having no links."""
  if is_remote(folder):
    kind, key = folder.split("://", 1)
    base = posixpath.normpath("/" + key)
    target = posixpath.normpath(posixpath.join(base, name))
    inside, path = posixpath.commonpath([base, target]) == base, f"{kind}:/{target}"
  else:
    base = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(folder, name))
    inside = os.path.commonpath([base, path]) == base
  if not inside:
    raise OutsideFolderError(f"{name!r} leads outside the folder {folder!r} (to {path!r})")
  return path


def read_regular_file(path: str) -> bytes:
  """The bytes of `path`, which must be a regular file: a local FIFO, device or folder raises
  NotRegularFileError, checked on the opened file (nothing can be swapped in after the check) and
  opened without blocking (O_NONBLOCK: a FIFO with no writer would wait forever). gs:// objects
  are plain bytes."""
  if is_remote(path):
    return read_bytes(path)
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  if not stat.S_ISREG(os.fstat(fd).st_mode):  # before open(), which refuses a folder its own way
    os.close(fd)
    raise NotRegularFileError(f"{path} is not a regular file (a FIFO, device or folder)")
  with builtins.open(fd, "rb") as f:  # closes fd
    return f.read()


def content_identity(path: str) -> dict[str, Any]:
  """What identifies the content of the file `path`, to notice that it changed: a local file's
  size and SHA-256 (one read); a gs:// object's size and the checksums GCS keeps (crc32c, and
  md5Hash where the object has one), without a download. Not the modification time nor the
  object's generation: a copy or a re-upload of the same bytes is the same input."""
  if is_remote(path):
    info = _fs(path).info(path)
    return {"size": int(info["size"]), "crc32c": info.get("crc32c"),
            "md5Hash": info.get("md5Hash")}
  with builtins.open(path, "rb") as f:
    return {"size": os.fstat(f.fileno()).st_size,
            "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


# A write refused for lack of room: a full disk, a quota, a file size limit (RLIMIT_FSIZE).
_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# tensorstore (orbax's array writes) reports the OS error inside a ValueError's text:
# 'Failed writing: "<file>": ... No space left on device [os_error_code='28']'.
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_QUOTED = re.compile(r'"([^"]+)"')


def out_of_space(error: BaseException) -> str | None:
  """'<OS reason> writing <file>' when `error`, or an exception it was raised from or while
  handling (a full disk fails the first write, and the cleanup after it the next), is a write
  refused for lack of room; None otherwise. Of several, one that names its file."""
  reasons, seen, pending = [], set(), [error]
  while pending:
    e = pending.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    pending.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    if isinstance(e, OSError) and e.errno in _OUT_OF_SPACE_ERRNOS:
      reasons.append((os.strerror(e.errno), e.filename))
      continue
    code = _TENSORSTORE_OS_ERROR.search(str(e))
    if code and int(code.group(1)) in _OUT_OF_SPACE_ERRNOS:
      files = _QUOTED.findall(str(e)[:code.start()])
      reasons.append((os.strerror(int(code.group(1))), files[-1] if files else None))
  if not reasons:
    return None
  reason, file = next((r for r in reasons if r[1]), reasons[0])
  return f"{reason} writing {file}" if file else reason


def basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def exists(path: str) -> bool:
  return _fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
  return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
  return _fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  """Creates a local folder and its parents; nothing for a remote prefix (keys need no folder)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """The names (not paths) in a folder, sorted; FileNotFoundError when it has none."""
  if not is_remote(path):
    return sorted(os.listdir(path))
  fs = _fs(path)
  if not fs.isdir(path):
    raise FileNotFoundError(f"no such folder: {path}")
  return sorted(basename(entry) for entry in fs.ls(path, detail=False)
                if entry.rstrip("/") != _key(path).rstrip("/"))


def glob(folder: str, pattern: str) -> list[str]:
  """The paths in `folder` whose names match the shell pattern `pattern`, sorted."""
  try:
    names = listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return [join(folder, name) for name in names if fnmatch.fnmatchcase(name, pattern)]


def size(path: str) -> int:
  return int(_fs(path).size(path)) if is_remote(path) else os.path.getsize(path)


def remove(path: str) -> None:
  """Deletes a file; a missing one is fine."""
  with contextlib.suppress(FileNotFoundError):
    if is_remote(path):
      _fs(path).rm_file(path)
    else:
      os.remove(path)


def move(source: str, destination: str) -> None:
  """Moves a file or folder to `destination` (whose parent is created): a rename on a local
  disk; in a bucket, a copy of each object and then the delete of the originals."""
  makedirs(dirname(destination))
  if is_remote(source):
    _fs(source).mv(source, destination, recursive=True)
  else:
    os.replace(source, destination)


def rmtree(path: str) -> None:
  """Deletes a folder and everything in it; a missing one is fine."""
  if is_remote(path):
    with contextlib.suppress(FileNotFoundError):
      _fs(path).rm(path, recursive=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def open(path: str, mode: str = "r", *, encoding: str | None = None,  # pylint: disable=redefined-builtin
         newline: str | None = None) -> IO:
  """builtins.open for local paths; for remote ones a read, or a write that becomes visible
  as one object when closed (a write that raises uploads nothing)."""
  if not is_remote(path):
    return builtins.open(path, mode, encoding=encoding, newline=newline)
  if "a" in mode or "+" in mode:
    raise ValueError(f"{path}: objects cannot be appended to or updated in place (mode {mode!r})")
  return _fs(path).open(path, mode, encoding=encoding, newline=newline)


def read_text(path: str, encoding: str = "utf-8") -> str:
  with open(path, encoding=encoding) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def upload(local_path: str, remote_path: str) -> None:
  """Copies a local file to a remote path: one object, visible only when complete."""
  _fs(remote_path).put_file(local_path, remote_path)


def _key(path: str) -> str:
  return path.split("://", 1)[1] if "://" in path else path


def _files_under(folder: str) -> list[str]:
  """The relative names of every file under a remote folder."""
  prefix = _key(folder).rstrip("/") + "/"
  return sorted(f[len(prefix):] for f in _fs(folder).find(folder)
                if f.startswith(prefix) and not f.endswith("/"))


def download_folder(remote_folder: str, local_folder: str) -> None:
  """Copies every file under a remote folder into `local_folder` (created), keeping the tree."""
  fs = _fs(remote_folder)
  names = _files_under(remote_folder)
  if not names:
    raise FileNotFoundError(f"no files under {remote_folder}")
  for name in names:
    target = os.path.join(local_folder, *name.split("/"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(join(remote_folder, name), target)


def upload_folder(local_folder: str, remote_folder: str) -> None:
  """Copies every file under `local_folder` to `remote_folder/<relative name>`."""
  for root, _, names in os.walk(local_folder):
    for name in sorted(names):
      local = os.path.join(root, name)
      relative = os.path.relpath(local, local_folder).replace(os.sep, "/")
      upload(local, join(remote_folder, relative))


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
  """A local file name with the content of `path`: `path` itself when local, else a temporary
  download removed afterwards. For libraries that open files by name (safetensors)."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="semclip_download_") as folder:
    local = os.path.join(folder, basename(path))
    _fs(path).get_file(path, local)
    yield local


@contextlib.contextmanager
def local_folder_copy(path: str) -> Iterator[str]:
  """A local folder with the files of `path` (itself when local, else a temporary download)."""
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="semclip_download_") as folder:
    download_folder(path, folder)
    yield folder


@contextlib.contextmanager
def writing_folder(path: str) -> Iterator[str]:
  """A local folder to write into, that becomes `path`: `path` itself (created) when local;
  else a temporary folder whose files are uploaded to `path` when the block ends normally."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="semclip_upload_") as folder:
    yield folder
    upload_folder(folder, path)


def default_cache_root() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                      "semclip_jax", "objects")


def local_mirror(path: str, root: str) -> str:
  """Where a host keeps its local file for the remote `path`: `<root>/<scheme>/<bucket>/<key>`,
  the same for every process and run on the host."""
  return os.path.join(root, scheme(path), *_key(path).split("/"))


def cached_local_copy(paths: Sequence[str], cache_root: str | None = None) -> list[str]:
  """Local copies of remote files (local paths are returned as they are), for readers that only
  open local files (ArrayRecord's). A copy lives at `<cache_root>/<scheme>/<bucket>/<key>` with
  a `.source` note of the object's identity (generation, checksum, size); it is reused while the
  object is unchanged. A new copy is downloaded beside it and renamed into place, so a killed
  download never counts. Processes of one host may race: the last rename wins, same bytes."""
  cache_root = cache_root or default_cache_root()
  local = []
  for path in paths:
    if not is_remote(path):
      local.append(path)
      continue
    target = local_mirror(path, cache_root)
    info = _fs(path).info(path)
    identity = " ".join(str(info.get(k)) for k in ("generation", "crc32c", "md5Hash", "size"))
    note = target + ".source"
    if not (os.path.isfile(target) and os.path.isfile(note)
            and builtins.open(note, encoding="utf-8").read() == identity):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      partial = f"{target}.{secrets.token_hex(6)}.part"
      try:
        _fs(path).get_file(path, partial)
        if os.path.getsize(partial) != int(info["size"]):
          raise OSError(f"{path}: downloaded {os.path.getsize(partial)} bytes of {info['size']}")
        os.replace(partial, target)
      finally:
        with contextlib.suppress(FileNotFoundError):
          os.remove(partial)
      with builtins.open(note, "w", encoding="utf-8") as f:
        f.write(identity)
    local.append(target)
  return local


class RewrittenObject:
  """An append-only text or byte file on an object store: the content is kept in memory and the
  whole object is rewritten by `flush` (at most every `min_interval_s`, unless forced) and at
  `close`. Opening an existing object starts from its content (a resumed run appends to it)."""

  def __init__(self, path: str, *, binary: bool = False, min_interval_s: float = 0.0,
               keep_existing: bool = True):
    self.path = path
    self._binary = binary
    self._min_interval_s = min_interval_s
    self._chunks: list = []
    if keep_existing and exists(path):
      self._chunks.append(read_bytes(path) if binary else read_text(path))
    self._dirty = False
    self._last_upload = 0.0

  def write(self, data) -> int:
    self._chunks.append(data)
    self._dirty = True
    return len(data)

  def flush(self, force: bool = False) -> None:
    now = time.monotonic()
    if not self._dirty or (not force and now - self._last_upload < self._min_interval_s):
      return
    content = (b"" if self._binary else "").join(self._chunks)
    self._chunks = [content]
    with open(self.path, "wb" if self._binary else "w",
              encoding=None if self._binary else "utf-8") as f:
      f.write(content)
    self._dirty, self._last_upload = False, now

  def close(self) -> None:
    self.flush(force=True)
