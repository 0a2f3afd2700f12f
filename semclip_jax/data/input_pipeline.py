"""The grain input pipeline: triple sources -> batches of images and tokenized caption triples.

source → this process's shard (`process_index::process_count`) → seeded shuffle, reshuffled each
epoch → decode (training: JPEG draft decoding at a reduced scale when the image is ≥ 2× what the
crop needs, `jpeg_draft`) → resize (`resize`): "shortest_side_crop" = random resized crop (train,
with `train_crop="random_resized"`) or bicubic shortest-side resize + centre crop (eval), or
"squash" = bilinear resize of the whole image to S × S (train and eval, no crop: the official
code) → tokenize the three captions → drop bad records (counted) → batch → worker processes →
optionally global `jax.Array`s over a mesh.

Images stay uint8 up to the consumer, which normalises them (`transforms.normalize` with
`normalization`: CLIP's or ImageNet's mean/std): the train step on the device, inside its jit;
evaluation on the host. uint8 is a quarter of float32's bytes through the workers' shared memory
and the host-to-device copy, and the host spends no time on arithmetic the device does for free.

Batches are dicts: `image` uint8 [B, S, S, 3], `tokens` int32 [B, 3, L] (original, paraphrase,
negation; L is the smallest of `length_buckets` holding the batch's longest caption), `id` and
`image_key` (numpy strings; `image_key` is shared by the rows showing the same image: a source's
own key, else a hash of the encoded image). The eval path is deterministic. The iterator's state
(`get_state`/`set_state`) is JSON-able and restores the exact batch sequence.

Bad-input policy: a record whose image is missing, unreadable, truncated or zero-size, outside
its image folder or not a regular file (`sources.read_image_file`), or too large
(`max_image_pixels`: the header's size, and the centre crop's resize, checked before decoding),
or whose caption field is empty or not a string, is skipped, counted and logged once with its id
and reason. Each epoch ends with a summary; when an epoch's skipped records exceed
`max_bad_fraction` of its records the pipeline raises `BadDataError` naming the first offenders.
"""

from __future__ import annotations

import atexit
import copy
import logging
import threading
from typing import Any, Iterator

import grain
import grain.multiprocessing
import ml_collections
import numpy as np
from PIL import Image

from semclip_jax.data import bucket_agreement
from semclip_jax.data.sources import FIELDS, content_key
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.data.transforms import (MAX_IMAGE_PIXELS, RESIZES, TOO_LARGE_ERRORS,
                                         check_resize, decode_rgb, draft_size, eval_resize,
                                         open_image, random_resized_crop_box)

logger = logging.getLogger(__name__)
_MAX_NOTES = 5  # offenders remembered per batch, and named in BadDataError


class BadDataError(RuntimeError):
  """Too many records of an epoch had to be skipped."""


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch_size = 256  # global batch size (split evenly over processes)
  c.image_size = 224  # square side fed to the image tower
  c.context_length = 77  # tokens per caption
  # Each batch's tokens are cut to the smallest of these lengths that holds its longest caption
  # (capped at context_length): the text tower is causal and pools at EOS, so the tokens after the
  # last EOS change nothing. One compilation per length used; () keeps context_length always.
  c.length_buckets = (16, 24, 32, 48, 64, 77)
  c.train_crop = "random_resized"  # train images: "random_resized" crop or "center" (as eval)
  c.crop_scale = (0.9, 1.0)  # random resized crop: range of the kept fraction of the image area
  # "shortest_side_crop": CLIP's bicubic shortest-side resize + centre crop (eval; train crops as
  # train_crop says). "squash": the official SemCLIP code's bilinear resize of the whole image to
  # image_size², aspect ignored, for train and eval alike (train_crop and crop_scale unused).
  c.resize = "shortest_side_crop"
  # Pixel mean/std: "clip" (what CLIP checkpoints were trained with) or "imagenet" (the official
  # SemCLIP code's torchvision Normalize).
  c.normalization = "clip"
  # Training decodes a JPEG at 1/2, 1/4 or 1/8 scale when it is at least that many times larger
  # than the crop needs (PIL draft mode: a fraction of the decode and resize cost, pixels within
  # about one grey level). Evaluation never does: it stays equal to CLIPImageProcessor.
  c.jpeg_draft = True
  c.seed = 0  # shuffle and augmentation seed
  c.num_epochs = ml_collections.config_dict.placeholder(int)  # train epochs; unset = forever
  c.worker_count = 2  # grain worker processes (0: decode in the main process)
  c.worker_buffer_size = 2  # batches each worker prepares ahead
  c.max_bad_fraction = 0.01  # an epoch may skip at most this fraction of its records
  # Largest image, in pixels: its header's width × height (checked before any decoding) and the
  # centre crop's shortest-side resize (a 3,000,000 × 1 image would make 224 × 672,000,000). An
  # image over it is a bad record, as an undecodable one. 50 M: 150 MB decoded, above any photo
  # of the data and a 48 MP camera's, far below a host's memory (transforms.MAX_IMAGE_PIXELS).
  c.max_image_pixels = MAX_IMAGE_PIXELS
  return c


# ----------------------------------------------------------------------------------------------
# Per-record preprocessing (runs in the worker processes).
# ----------------------------------------------------------------------------------------------
def _caption_error(record: dict[str, Any]) -> str | None:
  for field in FIELDS:
    value = record.get(field)
    if not isinstance(value, str):
      return f"caption field {field!r} is not a string ({type(value).__name__})"
    if not value.strip():
      return f"caption field {field!r} is empty"
  return None


class Preprocess:
  """record -> {"image", "tokens", "id", "image_key"}, or {"id", "error"} for a record to skip.

  `crop` ("random_resized" or "center") applies to `resize="shortest_side_crop"`; "squash" never
  crops. Without an `rng` (eval) the output is a pure function of the record. A record carrying an
  `image_embedding` (from `image_embedding_cache.CachedSource`) passes it on instead of "image".
  An image of more than `max_image_pixels` pixels, or whose centre crop would resize it to more,
  is skipped before it is decoded.
  """

  def __init__(self, tokenizer: CLIPTokenizer, image_size: int, context_length: int,
               crop: str, crop_scale: tuple[float, float], *,
               resize: str = "shortest_side_crop", jpeg_draft: bool = False,
               max_image_pixels: int | None = MAX_IMAGE_PIXELS):
    if crop not in ("random_resized", "center"):
      raise ValueError(f"unknown crop {crop!r} (data.train_crop); choose 'random_resized' or "
                       "'center'")
    if resize not in RESIZES:
      raise ValueError(f"unknown data.resize {resize!r}; choose one of {list(RESIZES)}")
    self.tokenizer = tokenizer
    self.image_size = image_size
    self.context_length = context_length
    self.crop = crop
    self.crop_scale = tuple(crop_scale)
    self.resize = resize
    self.jpeg_draft = jpeg_draft
    self.max_image_pixels = max_image_pixels

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None
               ) -> dict[str, Any]:
    ident = str(record.get("id"))
    error = record.get("error") or _caption_error(record)
    if error is None and "image_embedding" in record:  # a cached embedding stands for the image
      image = {"image_embedding": np.asarray(record["image_embedding"], np.float32)}
    elif error is None:
      pixels, error = self.pixels(record, rng)
      image = {"image": pixels}
    if error is not None:
      return {"id": ident, "error": error}
    tokens = self.tokenizer([record[f] for f in FIELDS], context_length=self.context_length)
    key = record.get("image_key")  # sources name their images; other records get a content hash
    return {**image, "tokens": tokens, "id": ident,
            "image_key": content_key(record["image"]) if key is None else str(key)}

  def pixels(self, record: dict[str, Any], rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray | None, str | None]:
    """(uint8 [S, S, 3] of the record's image, None), or (None, why it must be skipped)."""
    if record.get("error"):
      return None, record["error"]
    if record.get("image") is None:
      return None, "no image"
    box = None
    try:
      # The header: the size, before any pixel is decoded (an image over the limit stops here).
      pil = open_image(record["image"], self.max_image_pixels)
      if min(pil.size) == 0:
        return None, "zero-size image"
      if self.resize != "squash" and self.crop == "random_resized" and rng is not None:
        box = random_resized_crop_box(*pil.size, rng, self.crop_scale)  # resizes the box only
      else:  # the eval resize, whose size the image's aspect decides
        check_resize(*pil.size, self.image_size, self.resize, self.max_image_pixels)
      pil, factor = decode_rgb(pil, draft_size(*pil.size, self.image_size, self.resize, box)
                               if self.jpeg_draft else None)
    except TOO_LARGE_ERRORS as e:
      return None, f"image too large: {e}"
    except Exception as e:  # PIL raises many types for broken files; all mean "skip it"
      return None, f"undecodable image: {type(e).__name__}: {e}"
    # The resize stays outside: its size is checked above, so what it raises is the host's.
    if box is not None:
      box = tuple(x / factor for x in box)  # a drafted image is `factor` times smaller
      return np.asarray(pil.resize((self.image_size,) * 2, Image.Resampling.BICUBIC, box=box)), None
    return eval_resize(pil, self.image_size, self.resize), None  # squash, or the centre crop


# ----------------------------------------------------------------------------------------------
# Dropping bad records with in-band counts (workers cannot share counters with the main process).
# ----------------------------------------------------------------------------------------------
class _DropBadIterator(grain.DatasetIterator):

  def __init__(self, parent, max_bad_fraction: float | None, epoch_size: int, workers: int):
    super().__init__(parent)
    self._max_bad_fraction, self._epoch_size = max_bad_fraction, epoch_size
    self._give_up_after = (None if max_bad_fraction is None
                           else bad_records_in_a_row_bound(max_bad_fraction, epoch_size, workers))
    self._logged: set[str] = set()  # each bad record is logged once, not once per epoch

  def __next__(self) -> dict[str, Any]:
    skipped, notes = 0, []
    while True:
      element = next(self._parent)
      if "error" not in element:
        break
      skipped += 1
      if element["id"] not in self._logged:
        self._logged.add(element["id"])
        logger.warning("skipping record %s: %s", element["id"], element["error"])
      if len(notes) < _MAX_NOTES:
        notes.append(f"{element['id']}: {element['error']}")
      if self._give_up_after is not None and skipped > self._give_up_after:
        raise BadDataError(
            f"{skipped} bad record(s) in a row: more than max_bad_fraction="
            f"{self._max_bad_fraction} allows in epochs of {self._epoch_size} records; first "
            f"offenders: {'; '.join(notes)}")
    return {**element, "num_skipped": np.int32(skipped), "skip_notes": "\n".join(notes)}

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class DropBadRecords(grain.IterDataset):
  """Drops error records; the next good one carries how many were dropped and why (the counts
  travel in-band: workers cannot share counters with the main process).

  With `max_bad_fraction`, it raises BadDataError after more bad records in a row than that
  fraction of epochs of `epoch_size` records, read by `workers` processes, can hold
  (`bad_records_in_a_row_bound`). The counts are checked when a good record arrives, and when
  every record is bad (a wrong `image_dir`) none ever does: without the bound, a repeating dataset
  would look for one forever."""

  def __init__(self, parent, max_bad_fraction: float | None = None, epoch_size: int = 0,
               workers: int = 0):
    super().__init__(parent)
    self._limits = (max_bad_fraction, epoch_size, workers)

  def __iter__(self) -> _DropBadIterator:
    return _DropBadIterator(self._parent.__iter__(), *self._limits)


def bad_records_in_a_row_bound(max_bad_fraction: float, epoch_size: int, workers: int = 0) -> int:
  """The most bad records in a row that one reader (the main process, or each of `workers` worker
  processes, which read every `workers`-th record) lets pass under `max_bad_fraction`.

  A run of n bad records in a reader's stream puts at least min(n/2, E/W) of them into one epoch
  of E records (W readers: it spans two epochs, or covers the reader's whole share E/W of one).
  With f·W < 1, n > 2·f·E therefore puts more than f·E into some epoch, which the per-epoch check
  would refuse once it saw it. Otherwise (f ≥ 1 allows anything) past 2·E: the reader has read
  its share of at least two epochs without finding one good record."""
  if max_bad_fraction * max(workers, 1) < 1:
    return int(2 * max_bad_fraction * epoch_size)
  return 2 * epoch_size


# ----------------------------------------------------------------------------------------------
# The pipeline.
# ----------------------------------------------------------------------------------------------
def build_dataset(source, config: ml_collections.ConfigDict, *, train: bool,
                  tokenizer: CLIPTokenizer | None = None, process_index: int = 0,
                  process_count: int = 1) -> tuple[grain.IterDataset, int]:
  """The grain dataset of batches for this process, and its records per epoch."""
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by {process_count} processes")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  epoch_size = len(ds)
  if epoch_size == 0:
    raise ValueError(f"{source!r} has no records for process {process_index} of {process_count}")
  if train:
    ds = ds.shuffle(seed=config.seed).repeat(config.num_epochs)
  crop = config.train_crop if train else "center"
  preprocess = Preprocess(tokenizer or CLIPTokenizer(context_length=config.context_length),
                          config.image_size, config.context_length, crop, config.crop_scale,
                          resize=config.resize,
                          jpeg_draft=train and config.get("jpeg_draft", False),
                          max_image_pixels=config.get("max_image_pixels", MAX_IMAGE_PIXELS))
  ds = ds.random_map(preprocess, seed=config.seed) if train else ds.map(preprocess)
  # An evaluation reads each record once, so it ends; training repeats its records.
  max_bad_fraction = config.max_bad_fraction if train else None
  batches = DropBadRecords(ds.to_iter_dataset(), max_bad_fraction, epoch_size,
                           config.worker_count).batch(
      config.batch_size // process_count, drop_remainder=train)
  if config.worker_count > 0:
    _allow_grain_workers()
    _register_exit_release()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return batches, epoch_size


def _allow_grain_workers() -> None:
  # grain's worker processes read absl flags; outside absl.app (tests, notebooks) none were parsed.
  from absl import flags  # pylint: disable=import-outside-toplevel

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# Batches from worker processes arrive in shared memory (one POSIX segment per array), which grain
# unlinks when the array is garbage-collected, on a thread pool of its own: `__del__` only queues
# the unlink (`SharedMemoryArray.enable_async_del(1)`, called by every worker iterator). At exit,
# multiprocessing's exit function stops that pool and drops what is still queued, and Python's
# resource tracker then reports each segment never unlinked ("There appear to be N leaked
# shared_memory objects to clean up at shutdown") and unlinks it itself. Two kinds were left:
# unlinks still queued when the run ended, and arrays handed to jax (the train step's last
# batches), which the CPU client keeps without a copy until jax's own exit handler clears its
# backends, after ours has run. So a closing pipeline waits for the queue to run empty, and at
# exit, once it has, grain unlinks in `__del__` itself: every segment is unlinked where grain
# meant to, by this process.
_SHARED_MEMORY_WAIT_S = 10.0  # an unlink takes microseconds; never hang a closing run on it


def _wait_for_shared_memory_release() -> None:
  """Returns once grain's deleter thread has unlinked every segment queued so far."""
  # A private attribute of grain's public class: the pool exists once a worker iterator started.
  deleter = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
  if deleter is None:
    return
  try:
    # One thread taking tasks in order: a no-op finishes after every unlink queued before it.
    deleter.apply_async(int).wait(_SHARED_MEMORY_WAIT_S)
  except ValueError:  # the pool is already stopped: nothing queued will run anyway
    pass


def _release_shared_memory_at_exit() -> None:
  _wait_for_shared_memory_release()
  # From here on each release unlinks at once, in the thread that drops the array (grain's own
  # switch back to synchronous deletion; private, hence looked up): no run is left to slow down.
  synchronous = getattr(grain.multiprocessing.SharedMemoryArray, "_disable_async_del", None)
  if synchronous is not None:
    synchronous()


_exit_release_registered = False


def _register_exit_release() -> None:
  global _exit_release_registered
  if not _exit_release_registered:
    # atexit runs handlers last-in first-out: this one, registered after grain imported
    # multiprocessing, runs before multiprocessing's exit function stops grain's pool.
    atexit.register(_release_shared_memory_at_exit)
    _exit_release_registered = True


def longest_caption(tokens: np.ndarray, pad_id: int = 0) -> int:
  """The length of the longest caption in tokens [..., L]: one past the last position any caption
  uses (1 when all are padding, so that a length is never 0)."""
  used = np.flatnonzero(np.any(tokens != pad_id, axis=tuple(range(tokens.ndim - 1))))
  return int(used[-1]) + 1 if used.size else 1


def trim_to_bucket(tokens: np.ndarray, buckets: tuple[int, ...], pad_id: int = 0,
                   longest: int | None = None) -> np.ndarray:
  """[B, 3, L] -> [B, 3, L'] with L' the smallest bucket (or L) ≥ `longest`, by default the
  longest caption's length in `tokens`.

  Local and pure: with several processes, which must all cut alike (their rows form one global
  array), the caller passes the longest over all of them (InputPipeline agrees on it ahead).
  """
  full = tokens.shape[-1]
  if longest is None:
    longest = longest_caption(tokens, pad_id)
  length = min([b for b in buckets if longest <= b <= full] or [full])
  return tokens[..., :length]


def device_arrays(batch: dict[str, Any]) -> dict[str, Any]:
  """The arrays of a batch the train step takes (`InputPipeline.DEVICE_KEYS` that are present)."""
  return {k: batch[k] for k in InputPipeline.DEVICE_KEYS if k in batch}


class InputPipeline:
  """Iterator of batches with the bad-record accounting and a checkpointable state.

  With length buckets and an `agreement` among several processes, a prefetch thread draws each
  batch and agrees on its length one batch ahead (the wait for the slowest process overlaps the
  step in flight), so `__next__` only takes a finished batch; with one process all runs in
  `__next__`, in the caller's thread.
  """

  DEVICE_KEYS = ("image", "image_embedding", "tokens")  # the arrays a mesh gets, when present

  def __init__(self, dataset: grain.IterDataset, epoch_size: int, max_bad_fraction: float,
               mesh=None, length_buckets: tuple[int, ...] = (), pad_id: int = 0,
               agreement: bucket_agreement.BucketAgreement | None = None):
    self._iterator = iter(dataset)
    self.length_buckets = tuple(sorted(length_buckets))
    self.pad_id = pad_id
    self.epoch_size = epoch_size
    self.max_bad_fraction = max_bad_fraction
    self.mesh = mesh
    self.agreement = agreement or bucket_agreement.LocalAgreement()
    self._counts = {"epoch": 0, "seen_in_epoch": 0, "skipped_in_epoch": 0, "skipped_total": 0}
    self._notes: list[str] = []
    self._ahead = bool(self.length_buckets) and self.agreement.process_count > 1
    self._batch_number = 0  # batches drawn since the start or the last set_state
    # Started at the first __next__, not here: a resume's set_state right after construction
    # would only throw its work away.
    self._prefetcher: bucket_agreement.Prefetcher | None = None
    # Once a prefetch thread ran: grain's state after the last batch taken (grain's own is ahead).
    self._grain_state: Any = None

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def __next__(self) -> dict[str, Any]:
    if self._ahead:
      if self._prefetcher is None:
        if self._grain_state is None:
          self._grain_state = copy.deepcopy(self._iterator.get_state())
        self._prefetcher = bucket_agreement.Prefetcher(self._draw_ahead)
      batch, self._grain_state = self._prefetcher.take()
    else:
      batch = self._draw()
    skipped = int(np.sum(batch.pop("num_skipped")))
    notes = [n for joined in np.atleast_1d(batch.pop("skip_notes")) for n in str(joined).split("\n") if n]
    self._account(len(batch["id"]), skipped, notes)
    if self.mesh is not None:  # here, not in the prefetch thread: device transfers go with the step
      from semclip_jax.sharding import global_batch  # pylint: disable=import-outside-toplevel

      batch.update(global_batch(device_arrays(batch), self.mesh))
    return batch

  def _draw(self, stop: threading.Event | None = None) -> dict[str, Any]:
    """The next grain batch, its tokens cut to the length bucket agreed by all processes;
    StopIteration once this process or any other has no more."""
    batch = next(self._iterator, None)
    if not self.length_buckets:
      if batch is None:
        raise StopIteration
      return batch
    # A process out of input says so rather than staying silent: all stop at this batch together
    # instead of the others timing out.
    longest = None if batch is None else longest_caption(batch["tokens"], self.pad_id)
    number, self._batch_number = self._batch_number, self._batch_number + 1  # even if called off
    agreed = self.agreement.agree(number, longest, stop)
    if agreed is None:
      raise StopIteration
    batch["tokens"] = trim_to_bucket(batch["tokens"], self.length_buckets, self.pad_id, agreed)
    return batch

  def _draw_ahead(self, stop: threading.Event) -> tuple[dict[str, Any], Any]:
    """A batch and grain's state after it (the prefetch thread's work)."""
    batch = self._draw(stop)
    return batch, copy.deepcopy(self._iterator.get_state())

  def _stop_prefetch(self) -> None:
    if self._prefetcher is not None:
      self._prefetcher.stop()
      self._prefetcher = None

  def _account(self, good: int, skipped: int, notes: list[str]) -> None:
    c = self._counts
    c["seen_in_epoch"] += good + skipped
    c["skipped_in_epoch"] += skipped
    c["skipped_total"] += skipped
    self._notes = (self._notes + notes)[:_MAX_NOTES]
    if c["skipped_in_epoch"] > self.max_bad_fraction * self.epoch_size:
      raise BadDataError(
          f"skipped {c['skipped_in_epoch']} bad records in epoch {c['epoch']}, more than "
          f"max_bad_fraction={self.max_bad_fraction} of its {self.epoch_size} records; first "
          "offenders: " + "; ".join(self._notes))
    if c["seen_in_epoch"] >= self.epoch_size:
      logger.info("input epoch %d done: %d records, %d skipped as bad", c["epoch"],
                  c["seen_in_epoch"], c["skipped_in_epoch"])
      c.update(epoch=c["epoch"] + 1, seen_in_epoch=c["seen_in_epoch"] - self.epoch_size,
               skipped_in_epoch=0)
      self._notes = []

  @property
  def skipped(self) -> int:
    return self._counts["skipped_total"]

  def get_state(self) -> dict[str, Any]:
    """The state after the batches `__next__` returned (not after those prefetched)."""
    grain_state = self._iterator.get_state() if self._grain_state is None else self._grain_state
    return {"grain": grain_state, "counts": dict(self._counts), "notes": list(self._notes)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a `get_state`; with several processes, all must call it together (it starts a new
    generation of batch numbers for the length agreement)."""
    self._stop_prefetch()
    self._iterator.set_state(state["grain"])
    self.agreement.new_generation()
    self._batch_number = 0
    self._grain_state = None
    self._counts = dict(state["counts"])
    self._notes = list(state["notes"])

  def close(self) -> None:
    """Stops the prefetch thread and the worker processes (the workers also stop at garbage
    collection, but not reliably; a prefetch thread keeps the pipeline from it), and returns once
    the shared memory of the batches they had prepared is unlinked."""
    self._stop_prefetch()
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    _wait_for_shared_memory_release()


def make_pipeline(source, config: ml_collections.ConfigDict, *, train: bool, mesh=None,
                  tokenizer: CLIPTokenizer | None = None, process_index: int | None = None,
                  process_count: int | None = None,
                  agreement: bucket_agreement.BucketAgreement | None = None) -> InputPipeline:
  """The input pipeline of this process (jax.process_index / process_count by default).

  `agreement` agrees batch lengths over the processes; by default the key-value store of
  jax.distributed when this is one of several JAX processes reading a shard each, else none.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel

    process_index, process_count = jax.process_index(), jax.process_count()
  tokenizer = tokenizer or CLIPTokenizer(context_length=config.context_length)
  dataset, epoch_size = build_dataset(source, config, train=train, tokenizer=tokenizer,
                                      process_index=process_index, process_count=process_count)
  buckets = tuple(config.get("length_buckets", ()))
  if agreement is None and buckets:
    agreement = bucket_agreement.for_processes(process_index, process_count)
  return InputPipeline(dataset, epoch_size, config.max_bad_fraction, mesh, buckets,
                       tokenizer.pad_id, agreement)
