"""Agreeing each batch's token length across processes, one batch ahead and off the device.

The processes of a multi-host run put their rows of a batch into one global array, so all must
cut its tokens to the same length bucket: the one holding the longest caption of any process.
Agreeing on that with a device collective (`process_allgather`) in `__next__` queued behind the
training step in flight and stalled every step. Here the processes instead post their longest
length to the key-value store of JAX's coordination service (the one `jax.distributed.initialize`
starts) from a prefetch thread, one batch ahead, so the wait for the slowest process overlaps
the step and `__next__` only takes a finished batch from a queue.

Keys are `{name}/{generation}/{batch}/{process}`: `batch` counts the batches drawn since the
pipeline started or was last restored, and `generation` counts restores (`set_state`, which all
processes call together), so a batch number drawn again after a restore never meets an old key.
A process deletes its own keys once every process has posted a later one (see `KVAgreement`),
so the store holds at most two keys per process however long the run.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Protocol

logger = logging.getLogger(__name__)

_END = "end"  # posted instead of a length by a process whose input has run out
DEFAULT_TIMEOUT_S = 600.0  # the longest a process may lag: beyond a step, a stuck or dead peer
_KV_AGREEMENTS = itertools.count()  # numbers the KVAgreements of make_pipeline (see for_processes)


class AgreementStopped(Exception):
  """The waiting for the other processes was called off (`stop` was set): not an error."""


class BucketAgreement(Protocol):
  """The longest caption over all processes, batch by batch."""

  process_count: int

  def agree(self, batch: int, longest: int | None, stop: threading.Event | None = None
            ) -> int | None:
    """The maximum of every process's `longest` for `batch` (numbered from 0 after each
    `new_generation`), or None when some process has no batch `batch` (`longest=None`): then all
    stop there together instead of waiting for it. Raises AgreementStopped once `stop` is set."""

  def new_generation(self) -> None:
    """Starts numbering batches anew (all processes call it together, on restore)."""


class LocalAgreement:
  """One process: its own longest is everyone's."""

  process_count = 1

  def agree(self, batch: int, longest: int | None, stop: threading.Event | None = None
            ) -> int | None:
    del batch, stop
    return longest

  def new_generation(self) -> None:
    pass


class KVAgreement:
  """Agreement through the distributed runtime's key-value store: no device, no collective.

  `client` is a connected `DistributedRuntimeClient` (`jax._src.distributed.global_state.client`
  in a run). `name` separates agreements sharing a store. A process that does not post within
  `timeout_s` of this one asking is named in a TimeoutError instead of hanging the run.
  """

  def __init__(self, client: Any, process_index: int, process_count: int, *,
               name: str = "semclip_jax/length_buckets", timeout_s: float = DEFAULT_TIMEOUT_S,
               poll_s: float = 0.25):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    self.client = client
    self.process_index = process_index
    self.process_count = process_count
    self.name = name
    self.timeout_s = timeout_s
    self.poll_s = poll_s  # how soon a wait notices `stop`
    self.generation = 0
    self._posted: list[str] = []  # own keys not yet deleted, oldest first

  def _key(self, batch: int, process: int) -> str:
    return f"{self.name}/{self.generation}/{batch}/{process}"

  def agree(self, batch: int, longest: int | None, stop: threading.Event | None = None
            ) -> int | None:
    mine = _END if longest is None else str(longest)
    key = self._key(batch, self.process_index)
    self.client.key_value_set(key, mine)
    self._posted.append(key)
    deadline = time.monotonic() + self.timeout_s
    values = [mine if p == self.process_index else self._wait(batch, p, deadline, stop)
              for p in range(self.process_count)]
    # A process posts for this batch only after it read everyone's keys of the previous one, and
    # after a restore only once it stopped reading the old generation: nobody reads our earlier
    # keys again.
    for key in self._posted[:-1]:
      self.client.key_value_delete(key)
    del self._posted[:-1]
    if _END in values:
      ended = [p for p, v in enumerate(values) if v == _END]
      if len(ended) < self.process_count:
        logger.warning("input batch %d: process(es) %s ran out of input, so all processes stop "
                       "here (their shards hold different numbers of batches)", batch, ended)
      return None
    return max(int(v) for v in values)

  def _wait(self, batch: int, process: int, deadline: float, stop: threading.Event | None) -> str:
    """`process`'s value for `batch`, waiting in slices so that `stop` is noticed."""
    from jax.errors import JaxRuntimeError  # pylint: disable=import-outside-toplevel

    key = self._key(batch, process)
    while stop is None or not stop.is_set():
      left = deadline - time.monotonic()
      if left <= 0:
        raise self._timeout(batch)
      wait_s = left if stop is None else min(left, self.poll_s)
      try:
        return self.client.blocking_key_value_get(key, max(1, int(1000 * wait_s)))
      except JaxRuntimeError as e:
        if "DEADLINE_EXCEEDED" not in str(e):
          raise
    raise AgreementStopped

  def _timeout(self, batch: int) -> TimeoutError:
    folder = f"{self.name}/{self.generation}/{batch}/"
    posted = {int(key.rsplit("/", 1)[1]) for key, _ in self.client.key_value_dir_get(folder)}
    missing = sorted(set(range(self.process_count)) - posted)
    return TimeoutError(
        f"process {self.process_index}: process(es) {missing} did not post the longest caption "
        f"of input batch {batch} (counted from the pipeline's start or last restore, generation "
        f"{self.generation}) within {self.timeout_s:g}s: they are stuck, dead, or drew a different "
        "number of batches")

  def new_generation(self) -> None:
    self.generation += 1


class Prefetcher:
  """Runs `produce(stop)` over and over in a daemon thread, ahead of `take`.

  The results leave in order through a queue of `depth`; one more waits in hand to enter it, so
  with depth 1 the thread works at most two batches ahead of the one last taken. An exception of
  `produce` (StopIteration included) ends the thread and is raised by `take`, then by every later
  `take`; AgreementStopped ends it quietly.
  """

  def __init__(self, produce: Callable[[threading.Event], Any], depth: int = 1,
               name: str = "semclip-input-prefetch"):
    self._produce = produce
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._ended: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        self._queue.put((self._produce(self._stop), None))
    except AgreementStopped:
      pass
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put((None, e))  # the consumer raises it: the thread has no one else to tell

  def take(self) -> Any:
    """The next result; raises what `produce` raised instead, in the caller's thread."""
    if self._ended is not None:
      raise self._ended
    while True:
      try:
        result, error = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          raise RuntimeError("the input prefetch thread ended without a result: the pipeline was "
                             "closed or restored while waiting for it") from None
    if error is not None:
      self._ended = error
      raise error
    return result

  def stop(self) -> None:
    """Ends the thread and waits for it; results not taken are dropped."""
    self._stop.set()
    # A thread blocked on a full queue needs one free slot to get back to its stop check; after
    # that it puts at most one more result, which fits.
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join()


def for_processes(process_index: int, process_count: int) -> BucketAgreement:
  """The agreement among `process_count` processes: LocalAgreement unless this is one of several
  JAX processes (shards simulated in one process need none), else a KVAgreement on
  jax.distributed's client."""
  import jax  # pylint: disable=import-outside-toplevel

  if process_count == 1 or jax.process_count() == 1:
    return LocalAgreement()
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  client = distributed.global_state.client
  if client is None:
    raise RuntimeError("several JAX processes but no jax.distributed client to agree on lengths")
  # Every process builds its sharded pipelines in the same order (one program), so numbering them
  # gives each pipeline the same key namespace on every process.
  return KVAgreement(client, process_index, process_count,
                     name=f"semclip_jax/length_buckets/{next(_KV_AGREEMENTS)}")

