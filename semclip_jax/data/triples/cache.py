"""An on-disk cache of model answers, written as they arrive: no answered request is sent twice.

One SQLite table:

  responses(caption TEXT, model TEXT, prompt TEXT, kind TEXT, response TEXT, created REAL,
            PRIMARY KEY (caption, model, prompt, kind))

`model` is the backend and model ("ollama:phi4"), `prompt` the SHA-256 of the rendered request
(messages, temperature, token limit; see `prompt_key`), `kind` the request's purpose
("paraphrase", "verify_negation", "regenerate_paraphrase", ...). Each `put` is its own transaction
in WAL mode: once it returns, the answer survives a killed process (synchronous=NORMAL trades only
the last commits before a power cut, never consistency). Many threads share one connection behind
a lock; SQLite's own locking lets several processes share a file. The file must be local (SQLite
cannot open a gs:// object): `check_local` refuses any other path, naming the option. A file SQLite
cannot use (damaged, not a database, locked past the timeout, a full disk) raises a ValueError
naming it, one line; a damaged one's says to move or delete it: it only holds answers already
received, which a run without it asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from typing import Any, Mapping

from semclip_jax import storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
  caption TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL, kind TEXT NOT NULL,
  response TEXT NOT NULL, created REAL NOT NULL,
  PRIMARY KEY (caption, model, prompt, kind))
"""


def prompt_key(payload: Mapping[str, Any]) -> str:
  """SHA-256 of the canonical JSON of everything that shapes an answer besides the model."""
  text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_local(path: str, what: str = "cache") -> str:
  """`path` if it is a local file name; else a ValueError naming `what` (one line)."""
  if storage.scheme(path):
    raise ValueError(f"{what}: {path!r}: the answer cache is a SQLite file and must be local "
                     "(SQLite cannot open gs:// or other URLs); give a local path")
  return path


def _unusable(path: str, error: sqlite3.Error) -> ValueError:
  # SQLITE_CORRUPT and SQLITE_NOTADB are plain DatabaseErrors; a locked file, a full disk or an
  # I/O error are its subclass OperationalError, where deleting the file is the wrong advice.
  if type(error) is sqlite3.DatabaseError:  # pylint: disable=unidiomatic-typecheck
    return ValueError(f"{path}: the answer cache is damaged or not a SQLite database ({error}); "
                      "move it away or delete it and rerun: it only holds answers already "
                      "received, which are then asked again")
  return ValueError(f"{path}: cannot use the answer cache: {error}")


class Cache:
  """Answers keyed by (caption, model, prompt, kind); thread-safe."""

  def __init__(self, path: str):
    check_local(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    self.path = path
    self._lock = threading.Lock()
    try:
      # isolation_level=None: autocommit, so every INSERT is durable when execute() returns.
      self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
    except sqlite3.Error as e:
      raise _unusable(path, e) from e
    try:
      for statement in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", _SCHEMA):
        self._query(statement)  # a damaged or foreign file fails here, on its first read
    except ValueError:
      self._db.close()
      raise

  def _query(self, sql: str, args: tuple = ()) -> tuple | None:
    """The first row of `sql`; a SQLite error becomes `_unusable`'s ValueError."""
    with self._lock:
      try:
        return self._db.execute(sql, args).fetchone()
      except sqlite3.Error as e:
        raise _unusable(self.path, e) from e

  def get(self, caption: str, model: str, prompt: str, kind: str) -> str | None:
    row = self._query(
        "SELECT response FROM responses WHERE caption=? AND model=? AND prompt=? AND kind=?",
        (caption, model, prompt, kind))
    return None if row is None else row[0]

  def put(self, caption: str, model: str, prompt: str, kind: str, response: str) -> None:
    self._query("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                (caption, model, prompt, kind, response, time.time()))

  def __len__(self) -> int:
    return self._query("SELECT COUNT(*) FROM responses")[0]

  def close(self) -> None:
    with self._lock:
      self._db.close()

  def __enter__(self) -> "Cache":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
