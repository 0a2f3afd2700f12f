"""The resumable ArrayRecord shard writer: `Item`s in, checked and encoded records out.

Input record i goes to shard `triples-{i // records_per_shard:05d}.array_record` as
`sources.encode_record(...)`, with the image file's bytes as they are (decoded pixels are encoded
as JPEG once). Bad records (image missing, empty or undecodable; an image path leading outside
the image folder or naming no regular file, `sources.read_image_file`; an image of more than
`max_image_pixels`, from its header; an empty or non-string caption, paraphrase or negation; a
reader's own skip reason) are skipped and counted by reason in `summary.json`.

A shard is written under a temporary name, renamed when complete and then recorded in
`progress.json`: rerunning with the same settings redoes only incomplete shards, so an interrupted
run resumes without duplicates or losses, and a finished one only prints its summary.
`progress.json` also records the identity of the input files (`storage.content_identity`: size
and SHA-256, or a gs:// object's checksums): a rerun whose inputs changed while the folder holds
shards is refused (PrepareError naming the file), since its shards would mix old and new records;
redoing them silently would hide that the first run's output is gone. While it
works, `progress.Progress` reports records done (of the total, when the reader knows it), written
and skipped, with rate and ETA, on stderr.

The output folder and image paths may be local or gs:// (`semclip_jax.storage`): a shard is then
written to a local temporary file and uploaded as one object when complete (`atomic_io`), and
progress is read back from the bucket, so a run resumes from any host.

Used by `python -m semclip_jax.data.prepare` (with `readers`) and by the triple generation tool
(`triples.files`), which rewrites shards with new paraphrases and negations.
"""

from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import dataclasses
import io
import itertools
import json
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from PIL import Image

from semclip_jax import atomic_io, storage
from semclip_jax.data import sources, transforms
from semclip_jax.progress import Progress

SHARD_NAME = "triples-{:05d}.array_record"
SHARD_GLOB = "triples-*.array_record"
PROGRESS, SUMMARY = "progress.json", "summary.json"
MAX_EXAMPLES = 20  # example ids kept per skip reason

# Skip reasons found here: a fixed vocabulary, so that counts add up across shards and runs.
NO_IMAGE = "missing or unreadable image file"
EMPTY_IMAGE = "zero-size image file"
UNDECODABLE = "image does not decode"
OUTSIDE_IMAGE_DIR = "image path leads outside the image folder"
NOT_A_FILE = "image path is not a regular file (a FIFO, device or folder)"
TOO_LARGE = "image has more pixels than max_image_pixels"


class PrepareError(ValueError):
  """A structural problem (missing column, unreadable input, mixed settings): the command line
  exits with code 2."""


@dataclasses.dataclass
class Item:
  """One input record. `image`: encoded bytes or decoded uint8 HWC pixels, else `image_path` is
  read: with `image_dir`, a name from the input (untrusted) that must stay inside that folder
  (`sources.read_image_file`); without, a path the program chose. `error`: a skip reason known
  without the image; `image_key`: the image's name where the input has one (a file name), stored
  so retrieval groups the rows of one image (without it the reader falls back to a hash of the
  image bytes)."""
  id: str
  caption: Any
  paraphrase: Any
  negation: Any
  image: bytes | np.ndarray | None = None
  image_path: str | None = None
  error: str | None = None
  image_key: str | None = None
  image_dir: str | None = None


# One Item per input record, in a fixed order; None allowed where `wanted(index)` is False, so that
# a resumed run need not read the images of completed shards. A reader returning a sized iterable
# (a list, a `Counted`) gives the progress lines a total and an ETA.
Reader = Callable[[Callable[[int], bool]], Iterable["Item | None"]]


class Counted:
  """`iterable` (e.g. a generator) that says it yields `length` items: a reader's records, lazily
  made, with their number known for the progress lines."""

  def __init__(self, iterable: Iterable[Any], length: int):
    self.iterable, self.length = iterable, length

  def __iter__(self) -> Iterator[Any]:
    return iter(self.iterable)

  def __len__(self) -> int:
    return self.length


# ----------------------------------------------------------------------------------------------
# Checking and encoding one record (in worker threads).
# ----------------------------------------------------------------------------------------------
def _read_image(item: Item) -> tuple[bytes | None, str | None]:
  """The bytes of `item.image_path` (see `Item`), or (None, skip reason)."""
  try:
    if item.image_dir is not None:
      return sources.read_image_file(item.image_dir, item.image_path or ""), None
    return storage.read_regular_file(item.image_path or ""), None
  except storage.OutsideFolderError:
    return None, OUTSIDE_IMAGE_DIR
  except storage.NotRegularFileError:
    return None, NOT_A_FILE
  except (OSError, ValueError):  # ValueError: a name os cannot take (a NUL byte)
    return None, NO_IMAGE


def _image_bytes(item: Item, max_pixels: int | None) -> tuple[bytes | None, str | None]:
  if isinstance(item.image, np.ndarray):  # decoded pixels only: encode once, at high quality
    out = io.BytesIO()
    Image.fromarray(item.image).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue(), None
  data = item.image
  if data is None:
    data, reason = _read_image(item)
    if reason is not None:
      return None, reason
  if not data:
    return None, EMPTY_IMAGE
  try:  # the size from the header first; load() then decodes every pixel: truncated files fail
    with transforms.open_image(data, max_pixels) as image:  # here, not at training time
      image.load()
  except transforms.TOO_LARGE_ERRORS:
    return None, TOO_LARGE
  except Exception:  # pylint: disable=broad-except  (PIL raises many types for bad files)
    return None, UNDECODABLE
  return data, None


def _encode(item: Item, max_pixels: int | None = transforms.MAX_IMAGE_PIXELS
            ) -> tuple[bytes | None, str | None]:
  """(record, None) or (None, skip reason); images of more than `max_pixels` are skipped."""
  is_text = lambda value: isinstance(value, str) and bool(value.strip())
  if not is_text(item.caption):
    return None, "empty or non-string caption"
  if item.error is not None:
    return None, item.error
  for field in ("paraphrase", "negation"):
    if not is_text(getattr(item, field)):
      return None, f"empty or non-string {field}"
  image, reason = _image_bytes(item, max_pixels)
  if reason is not None:
    return None, reason
  return sources.encode_record(item.id, image, item.caption, item.paraphrase, item.negation,
                               item.image_key), None


def _ordered_map(pool: concurrent.futures.Executor, items: Iterable[Item], window: int,
                 max_pixels: int | None
                 ) -> Iterator[tuple[Item, tuple[bytes | None, str | None]]]:
  """(item, _encode(item, max_pixels)) in input order, with at most `window` items (images) in
  flight."""
  pending: collections.deque = collections.deque()
  for item in items:
    pending.append((item, pool.submit(_encode, item, max_pixels)))
    if len(pending) > window:
      item, future = pending.popleft()
      yield item, future.result()
  for item, future in pending:
    yield item, future.result()


# ----------------------------------------------------------------------------------------------
# Shards, progress and summary.
# ----------------------------------------------------------------------------------------------
def _load_progress(output_dir: str, settings: dict, inputs: dict) -> dict:
  path = storage.join(output_dir, PROGRESS)
  shards = set(storage.glob(output_dir, SHARD_GLOB))  # one listing, also of a bucket folder
  if not storage.exists(path):
    if shards:
      raise PrepareError(f"{output_dir} holds shards but no {PROGRESS}: use an empty folder")
    return {"settings": settings, "inputs": inputs, "shards": {}, "complete": False}
  with storage.open(path, encoding="utf-8") as f:
    progress = json.load(f)
  if progress["settings"] != settings:
    old = progress["settings"]
    changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
    raise PrepareError(f"{output_dir} holds a run with other settings (differing: {changed}); "
                       "use another output folder")
  for key in list(progress["shards"]):  # a completed shard deleted since is redone
    if storage.join(output_dir, SHARD_NAME.format(int(key))) not in shards:
      del progress["shards"][key]
      progress["complete"] = False
  old = progress.get("inputs", {})  # none recorded: a folder of an older version, or no inputs
  if old != inputs:
    if progress["shards"]:  # refused, not redone: the user learns the first output is stale
      changed = sorted(p for p in inputs.keys() | old.keys() if inputs.get(p) != old.get(p))
      raise PrepareError(
          f"{', '.join(changed)}: not the content the shards in {output_dir} were made from "
          f"(size or checksum differ from {PROGRESS}'s record, or it has none); resuming would "
          f"mix old and new records: write to a new --output_dir, or delete {output_dir}")
    progress.update(inputs=inputs, complete=False)  # no shard written yet: nothing to mix
  return progress


def _merge(total: dict, counts: Mapping[str, Any]) -> None:
  """Adds `counts` ({"read", "written", "skipped": {reason: {"count", "examples"}}}) to `total`."""
  total["read"] += counts["read"]
  total["written"] += counts["written"]
  for reason, entry in counts["skipped"].items():
    merged = total["skipped"].setdefault(reason, {"count": 0, "examples": []})
    merged["count"] += entry["count"]
    merged["examples"] = (merged["examples"] + entry["examples"])[:MAX_EXAMPLES]


def _new_counts() -> dict:
  return {"read": 0, "written": 0, "skipped": {}}


def _summarize(progress: dict, output_dir: str, log: Callable[[str], Any]) -> dict:
  summary = _new_counts()
  for key in sorted(progress["shards"]):
    _merge(summary, progress["shards"][key])
  summary.update(shards=len(progress["shards"]), settings=progress["settings"])
  atomic_io.write_json(storage.join(output_dir, SUMMARY), summary, indent=1)
  log(f"{summary['written']} of {summary['read']} records written to {summary['shards']} shards "
      f"in {output_dir}; {summary['read'] - summary['written']} skipped")
  for reason, entry in sorted(summary["skipped"].items(), key=lambda kv: -kv[1]["count"]):
    log(f"  {entry['count']:>8}  {reason} (e.g. {', '.join(entry['examples'][:3])})")
  return summary


def write_shards(reader: Reader, output_dir: str, settings: Mapping[str, Any], *,
                 records_per_shard: int = 10_000, num_workers: int | None = None,
                 writer_options: str = "group_size:1", log: Callable[[str], Any] = print,
                 desc: str = "shards", inputs: Mapping[str, Mapping[str, Any]] | None = None,
                 max_image_pixels: int | None = transforms.MAX_IMAGE_PIXELS) -> dict:
  """Writes the records of `reader` as resumable ArrayRecord shards in `output_dir`; returns the
  summary ({"read", "written", "skipped": {reason: {"count", "examples"}}, "shards", "settings"},
  also written to `summary.json`). `desc` labels the progress lines. Images of more than
  `max_image_pixels` pixels are skipped (`TOO_LARGE`).

  `settings` (JSON-able) identify the run: a folder holding progress of other settings is refused
  with PrepareError; so is one holding shards made from other content of the input files:
  `inputs` maps each to its `storage.content_identity` (the caller's, computed once for the
  folders of all splits), recorded in progress.json.
  """
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter

  if records_per_shard < 1:
    raise PrepareError(f"records_per_shard must be positive, got {records_per_shard}")
  storage.makedirs(storage.check(output_dir, "output folder"))
  settings = json.loads(json.dumps({**settings, "records_per_shard": records_per_shard}))
  progress = _load_progress(output_dir, settings, json.loads(json.dumps(inputs or {})))
  progress_path = storage.join(output_dir, PROGRESS)
  for target in (SHARD_GLOB, PROGRESS, SUMMARY):  # what an interrupted run left half-written
    atomic_io.remove_stray_temps(storage.join(output_dir, target))
  if progress["complete"]:
    return _summarize(progress, output_dir, log)
  done = set(progress["shards"])
  wanted = lambda index: f"{index // records_per_shard:05d}" not in done
  workers = num_workers or min(8, os.cpu_count() or 1)
  items = reader(wanted)
  total = len(items) if isinstance(items, collections.abc.Sized) else None
  # Records of completed shards count as done but not in the rate: a resumed run's ETA is its own.
  before = _new_counts()
  for counts in progress["shards"].values():
    _merge(before, counts)
  by_shard = itertools.groupby(enumerate(items), lambda pair: pair[0] // records_per_shard)
  with (concurrent.futures.ThreadPoolExecutor(workers) as pool,
        Progress(total, desc, unit="records", initial=before["read"]) as meter):
    written, skipped = before["written"], before["read"] - before["written"]
    for shard, group in by_shard:
      if not wanted(shard * records_per_shard):
        continue  # groupby skips the rest of the group
      counts = _new_counts()
      # Only a complete shard carries the final name.
      with atomic_io.replacing(storage.join(output_dir, SHARD_NAME.format(shard))) as tmp:
        writer = ArrayRecordWriter(tmp, writer_options)
        try:
          for item, (record, reason) in _ordered_map(pool, (i for _, i in group), 4 * workers,
                                                     max_image_pixels):
            if record is not None:
              writer.write(record)
            written, skipped = written + (record is not None), skipped + (record is None)
            _merge(counts, {"read": 1, "written": int(record is not None), "skipped": {
                reason: {"count": 1, "examples": [item.id]}} if reason else {}})
            meter.log(written=written, skipped=skipped)
            meter.update(1)
        finally:
          writer.close()
      progress["shards"][f"{shard:05d}"] = counts
      atomic_io.write_json(progress_path, progress, indent=1)
      log(f"shard {shard:05d}: {counts['written']} of {counts['read']} records written")
  progress["complete"] = True
  atomic_io.write_json(progress_path, progress, indent=1)
  return _summarize(progress, output_dir, log)
