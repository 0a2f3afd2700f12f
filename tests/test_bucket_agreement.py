"""The length-bucket agreement of several processes: one batch ahead, through the key-value store
of JAX's real distributed runtime (a service and one client per simulated process, on 127.0.0.1
in this test process), with no device collective in `__next__`.

Each simulated process is an InputPipeline over its own shard; a "process" is driven by its own
thread, as each real process drives its pipeline from its main thread.
"""

import contextlib
import inspect
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from jax._src.lib import _jax
from jax.experimental import multihost_utils

from semclip_jax.data import bucket_agreement, input_pipeline
from semclip_jax.data.tokenizer import CLIPTokenizer

BUCKETS = (8, 16, 24, 32)
PREFETCH_THREAD = "semclip-input-prefetch"


@pytest.fixture(scope="module")
def tokenizer():
  return CLIPTokenizer()


@contextlib.contextmanager
def _cluster(processes: int):
  """A coordination service and `processes` connected clients, as jax.distributed starts them."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  service = _jax.get_distributed_runtime_service(address, processes, heartbeat_timeout=30,
                                                 shutdown_timeout=5)
  clients = [_jax.get_distributed_runtime_client(address, p, init_timeout=20, heartbeat_timeout=30,
                                                 shutdown_timeout=5) for p in range(processes)]
  try:
    _concurrently(lambda c: c.connect(), clients)  # each connect waits for all the others
    yield clients
  finally:
    _concurrently(lambda c: c.shutdown(), clients)  # so does shutdown
    service.shutdown()


def _concurrently(fn, items):
  """fn over items, one thread each (the simulated processes run at once); re-raises."""
  with ThreadPoolExecutor(len(items)) as pool:
    return list(pool.map(fn, items))


def _records(n: int, seed: int = 0) -> list[dict]:
  """A list-backed source whose captions have varied lengths (2 + words tokens), so that
  batches land in different buckets and the processes' own longest often differ."""
  rng = np.random.default_rng(seed)
  words = rng.choice([1, 2, 3, 4, 12, 20], size=n, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
  return [{"id": f"r{i}", "image": rng.integers(0, 256, (10, 12, 3), dtype=np.uint8),
           "caption": " ".join(["cat"] * int(words[i])), "paraphrase": "a feline",
           "negation": "no cat"} for i in range(n)]


def _config(**overrides):
  config = input_pipeline.default_config()
  # One epoch: grain's threads read hundreds of records ahead of an endless stream, which three
  # simulated processes on two cores would wait behind.
  config.update(batch_size=6, image_size=8, context_length=32, length_buckets=BUCKETS,
                worker_count=0, seed=3, num_epochs=1)
  config.update(**overrides)
  return config


def _pipeline(source, client, process: int, count: int, tokenizer, *, name: str,
              train: bool = True, timeout_s: float = 10.0, **overrides):
  """Process `process`'s pipeline of `count` (2 rows each), agreeing through `client`."""
  return input_pipeline.make_pipeline(
      source, _config(batch_size=2 * count, **overrides), train=train, tokenizer=tokenizer,
      process_index=process, process_count=count,
      agreement=bucket_agreement.KVAgreement(client, process, count, name=name,
                                             timeout_s=timeout_s))


def _pipelines(source, clients, tokenizer, **kwargs):
  return [_pipeline(source, client, p, len(clients), tokenizer, **kwargs)
          for p, client in enumerate(clients)]


def _take(pipeline, k: int) -> list[dict]:
  return [next(pipeline) for _ in range(k)]


def _prefetch_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD]


def _close(pipelines) -> None:
  for pipeline in pipelines:
    pipeline.close()


def _same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_processes_cut_each_batch_alike_and_as_their_concatenation_would(tokenizer):
  source, batches = _records(60), 6
  with _cluster(3) as clients:
    pipelines = _pipelines(source, clients, tokenizer, name="alike")
    try:
      agreed = _concurrently(lambda p: _take(p, batches), pipelines)  # [process][batch]
      keys = clients[0].key_value_dir_get("alike/")
      threads = _prefetch_threads()
    finally:
      _close(pipelines)
    # The references: the same shards uncut, with no agreement (no buckets, no thread).
    config = _config(length_buckets=())
    full = [_take(input_pipeline.make_pipeline(source, config, train=True, tokenizer=tokenizer,
                                               process_index=p, process_count=3), batches)
            for p in range(3)]
  cut = lambda tokens: input_pipeline.trim_to_bucket(tokens, BUCKETS).shape[-1]
  lengths, disagreed = set(), False
  for j in range(batches):
    expected = cut(np.concatenate([full[p][j]["tokens"] for p in range(3)]))
    for p in range(3):
      tokens = agreed[p][j]["tokens"]
      assert tokens.shape[-1] == expected, (j, p)
      np.testing.assert_array_equal(tokens, full[p][j]["tokens"][..., :expected])
      np.testing.assert_array_equal(agreed[p][j]["id"], full[p][j]["id"])
      disagreed |= cut(full[p][j]["tokens"]) != expected
    lengths.add(expected)
  assert len(lengths) >= 2  # different buckets occurred...
  assert disagreed  # ...and some process alone would have cut shorter than the others
  # Old keys are deleted as the run goes: at most the last two batches' of each process remain.
  assert len(keys) <= 2 * 3
  assert len(threads) == 3 and not any(t.is_alive() for t in threads)  # close() ended them
  assert not _prefetch_threads()


def test_next_has_no_collective_and_does_not_wait_for_the_others_step(tokenizer, monkeypatch):
  def no_collective(*args, **kwargs):
    raise AssertionError("a device collective in the per-step path")

  monkeypatch.setattr(multihost_utils, "process_allgather", no_collective)
  assert jax.process_count() == 1  # the agreement below spans 3 processes all the same
  source = _records(60, seed=1)
  with _cluster(3) as clients:
    pipelines = _pipelines(source, clients, tokenizer, name="ahead")
    try:
      _concurrently(lambda p: _take(p, 1), pipelines)
      # Processes 1 and 2 are busy in their step (their main threads call nothing), yet process 0
      # gets its next two batches: their prefetch threads agreed on them in the background.
      start = time.monotonic()
      ahead = _take(pipelines[0], 2)
      assert time.monotonic() - start < 5
      rest = _concurrently(lambda p: _take(p, 2), pipelines[1:])
    finally:
      _close(pipelines)
  for j in range(2):
    assert {ahead[j]["tokens"].shape[-1]} == {rest[p][j]["tokens"].shape[-1] for p in (0, 1)}
  # trim_to_bucket cuts to the longest it is given (the agreed one), whatever its own tokens hold,
  # and has no collective of its own to fall back on.
  tokens = np.ones((2, 3, 32), np.int32)
  assert input_pipeline.trim_to_bucket(tokens[..., :5], BUCKETS, 0, 20).shape[-1] == 5
  assert input_pipeline.trim_to_bucket(tokens, BUCKETS, 0, 20).shape[-1] == 24
  assert input_pipeline.trim_to_bucket(tokens, BUCKETS).shape[-1] == 32
  source_code = inspect.getsource(input_pipeline.trim_to_bucket)
  assert "process_allgather" not in source_code and "multihost_utils" not in source_code


def test_resume_is_exact_in_the_same_and_in_fresh_pipelines(tokenizer):
  source, n, m = _records(48, seed=2), 2, 4
  with _cluster(3) as clients:
    pipelines = _pipelines(source, clients, tokenizer, name="resume")
    try:
      states = _concurrently(lambda p: (_take(p, n), p.get_state())[1], pipelines)
      expected = _concurrently(lambda p: _take(p, m), pipelines)
      for pipeline, state in zip(pipelines, states):  # all processes restore together
        pipeline.set_state(state)
      again = _concurrently(lambda p: _take(p, m), pipelines)
      keys = clients[0].key_value_dir_get("resume/")
    finally:
      _close(pipelines)
    fresh = _pipelines(source, clients, tokenizer, name="resume_fresh")
    try:
      for pipeline, state in zip(fresh, states):
        pipeline.set_state(state)
      resumed = _concurrently(lambda p: _take(p, m), fresh)
    finally:
      _close(fresh)
  assert {b["tokens"].shape[-1] for batches in expected for b in batches} != {BUCKETS[-1]}
  for p in range(3):
    _same(again[p], expected[p])
    _same(resumed[p], expected[p])
    # The state is of the batches taken, not of those the thread drew ahead (nor lost at close).
    assert fresh[p].get_state() == pipelines[p].get_state()
  # After the restore, the keys of the first generation were deleted.
  assert keys and all(key.split("/")[1] == "1" for key, _ in keys)


def test_a_silent_process_is_named_in_a_timeout_error(tokenizer):
  with _cluster(2) as clients:
    # Process 1 is connected but never draws a batch.
    pipeline = _pipeline(_records(12), clients[0], 0, 2, tokenizer, name="silent", timeout_s=0.5)
    start = time.monotonic()
    try:
      with pytest.raises(TimeoutError, match=r"process\(es\) \[1\] did not post .* batch 0 "):
        next(pipeline)
      assert time.monotonic() - start < 5
    finally:
      pipeline.close()
  assert not _prefetch_threads()


def test_all_processes_stop_together_at_the_end_of_a_finite_dataset(tokenizer):
  # 16 records over 3 processes: shards of 6, 5 and 5, i.e. 3, 2 and 2 batches of 2. Process 0's
  # third batch has no partner on the others: all stop after two, none waits for a timeout.
  with _cluster(3) as clients:
    pipelines = _pipelines(_records(16, seed=3), clients, tokenizer, name="end", num_epochs=1)
    try:
      start = time.monotonic()
      epochs = _concurrently(list, pipelines)
      assert time.monotonic() - start < 5
      for pipeline in pipelines:
        with pytest.raises(StopIteration):
          next(pipeline)
    finally:
      _close(pipelines)
  assert [len(batches) for batches in epochs] == [2, 2, 2]


class _SourceError(Exception):
  pass


class _BrokenSource(list):
  """Records whose index 4 cannot be read (an I/O error of a real source)."""

  def __getitem__(self, index):
    if index == 4:
      raise _SourceError("record 4 is unreadable")
    return super().__getitem__(index)


def test_an_input_error_surfaces_in_next_with_its_type(tokenizer):
  # Eval order, 2 processes: process 0 reads records 0, 2, 4, ...: its second batch fails. Process
  # 1 then waits in vain for process 0's length of that batch, and names it.
  with _cluster(2) as clients:
    source = _BrokenSource(_records(12, seed=4))
    pipelines = _pipelines(source, clients, tokenizer, name="broken", train=False, timeout_s=1.0)
    try:
      _concurrently(lambda p: _take(p, 1), pipelines)
      with pytest.raises(_SourceError, match="record 4 is unreadable"):
        next(pipelines[0])
      with pytest.raises(_SourceError):  # and again: the pipeline does not go on past it
        next(pipelines[0])
      with pytest.raises(TimeoutError, match=r"process\(es\) \[0\] did not post .* batch 1 "):
        next(pipelines[1])
    finally:
      _close(pipelines)
  assert not _prefetch_threads()


def test_close_ends_a_prefetch_thread_that_waits_for_a_peer(tokenizer):
  with _cluster(2) as clients:
    # Process 1 never posts: process 0's thread waits in the agreement of batch 0 (up to a minute).
    pipeline = _pipeline(_records(12), clients[0], 0, 2, tokenizer, name="close", timeout_s=60)
    waiting = ThreadPoolExecutor(1)
    taken = waiting.submit(next, pipeline)  # the main thread of process 0, in __next__
    try:
      time.sleep(0.5)
      assert len(_prefetch_threads()) == 1 and not taken.done()
      start = time.monotonic()
      pipeline.close()
      assert time.monotonic() - start < 2
      with pytest.raises(RuntimeError, match="ended without a result"):  # not a hang either
        taken.result(timeout=5)
    finally:
      pipeline.close()
      waiting.shutdown()
  assert not _prefetch_threads()
