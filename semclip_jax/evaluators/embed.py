"""The one evaluation embedding path: towers jitted once per run, each source embedded once a round.

`Encoder` holds the two towers' embed functions, jitted once from a graphdef and called with the
parameters as an argument: a later evaluation round (new values, same shapes and shardings) reuses
the compiled programs, one per tower and input shape for the whole run. `EvalRound` binds an
encoder to one set of parameters and caches the triple embeddings of each source it is asked for,
keyed by the data read (the source's items and the pipeline settings), so evaluators scoring the
same split share one pass. Evaluators take a round (`Evaluator.evaluate`); `Evaluator.run(model)`
is the one-off form, which compiles for that model.

Batches are padded to the full batch (one compilation serves every batch, and the batch splits
evenly over devices) and the padded rows dropped, so every item is counted exactly once. Each pass
over a source reports its progress (`progress.Progress`, on the first process only: items
embedded of all, rate, ETA; one line at its end when it is short).

Every embedding reaches the host through `PaddedBatches.result`, which counts those holding NaN or
Inf (`EmbeddingCount`); `Evaluator.evaluate` reports an evaluator whose embeddings were not all
finite as NaN, with one warning, rather than the 0 that comparisons with NaN would score.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
from typing import Any, Callable, Hashable, Iterator

import jax
import ml_collections
import numpy as np
from flax import nnx

from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.shapes import ShapesSource
from semclip_jax.data.transforms import normalize
from semclip_jax.models.clip import CLIP, l2_normalize
from semclip_jax.models.model_config import CLIPConfig
from semclip_jax.progress import Progress
from semclip_jax.sharding import batch_sharding

logger = logging.getLogger(__name__)

CAPTION_KINDS = ("caption", "paraphrase", "negation")
Params = tuple[nnx.State, ...]  # the states `nnx.merge(graphdef, *params)` takes
Metrics = Iterator[tuple[str, float]]
# Settings of the eval pipeline; with the source's items they decide what a pass yields.
_PIPELINE_FIELDS = tuple(sorted(input_pipeline.default_config().keys()))
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # dispatch.BACKEND_COMPILE_EVENT
# Fewer items than this and an evaluator's metrics mean little: one item scores 0 or 1, so every
# accuracy moves by 1/n > 10 points per item, and recall@k is 1 once k reaches the gallery size.
# `warn_if_few` says so, once, when the evaluator is built.
MIN_EVAL_ITEMS = 10


# ----------------------------------------------------------------------------------------------
# The towers, jitted once.
# ----------------------------------------------------------------------------------------------
class Encoder:
  """`images(params, [B, S, S, 3]) -> [B, D]` and `texts(params, [N, L] int32) -> [N, D]`, both
  L2-normalised, each one `jax.jit` for the encoder's life (one compilation per input shape).

  `model_of` picks the CLIP out of what `graphdef` describes (the trainer passes its train state's
  graphdef and `(params, rest)`, so no host-side merge or split happens per round).
  """

  def __init__(self, graphdef: nnx.GraphDef, config: CLIPConfig,
               model_of: Callable[[Any], CLIP] = lambda module: module):
    self.config = config

    def model(params: Params) -> CLIP:  # merged inside the trace only
      return model_of(nnx.merge(graphdef, *params))

    def encode_images(params: Params, images: jax.Array) -> jax.Array:
      return l2_normalize(model(params).encode_image(images))

    def encode_texts(params: Params, tokens: jax.Array) -> jax.Array:
      return l2_normalize(model(params).encode_text(tokens))

    self.images = jax.jit(encode_images)
    self.texts = jax.jit(encode_texts)

  @classmethod
  def of(cls, model: CLIP) -> tuple[Encoder, Params]:
    """An encoder for `model`'s graph, and its parameters."""
    graphdef, state = nnx.split(model)
    return cls(graphdef, model.config), (state,)


@contextlib.contextmanager
def count_compilations() -> Iterator[collections.Counter]:
  """`with count_compilations() as compiled:` counts the XLA compilations inside the block by
  function name (the towers: "jit(encode_images)", "jit(encode_texts)"); `.total()`: all."""
  compiled: collections.Counter = collections.Counter()

  def listener(event: str, _: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
      compiled[kwargs.get("fun_name", "?")] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------------------------
# Non-finite embeddings, counted where they reach the host.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EmbeddingCount:
  """Embeddings handed to an evaluator, and how many of them hold a NaN or Inf."""
  total: int = 0
  nonfinite: int = 0

  @classmethod
  def of(cls, z: np.ndarray) -> EmbeddingCount:
    """The rows of [N, D] `z`, and those with any non-finite entry."""
    return cls(len(z), int(np.count_nonzero(~np.isfinite(z).all(axis=-1))))

  def add(self, other: EmbeddingCount) -> None:
    self.total += other.total
    self.nonfinite += other.nonfinite


# The innermost `counting_embeddings` block's count. A context variable, not an argument: the
# embed helpers (`embed_rows`, zero-shot's and NegBench's) take a round's encode functions, and the
# count would otherwise have to pass through each of their signatures.
_COUNT: contextvars.ContextVar[EmbeddingCount | None] = contextvars.ContextVar(
    "embedding_count", default=None)


@contextlib.contextmanager
def counting_embeddings() -> Iterator[EmbeddingCount]:
  """`with counting_embeddings() as count:` counts the embeddings handed out inside the block (by
  `PaddedBatches.result`, and by `EvalRound.triples` for a pass made earlier)."""
  count = EmbeddingCount()
  token = _COUNT.set(count)
  try:
    yield count
  finally:
    _COUNT.reset(token)


def _counted(count: EmbeddingCount) -> None:
  """Adds `count` to the innermost `counting_embeddings` block's (none: nobody is counting)."""
  current = _COUNT.get()
  if current is not None:
    current.add(count)


# ----------------------------------------------------------------------------------------------
# Padded batches.
# ----------------------------------------------------------------------------------------------
def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """[n, ...] -> [rows, ...] (n <= rows), zero rows appended."""
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]) if len(x) < rows else x


class PaddedBatches:
  """Encodes batches of at most `batch_size` rows, each padded to `batch_size`, and gathers the
  real rows. `add` only dispatches, so the device computes while the host prepares the next
  batch; results are read back once, by `result`."""

  def __init__(self, encode: Callable[[Any], jax.Array], batch_size: int, mesh=None):
    self.encode = encode
    self.batch_size = batch_size
    self.mesh = mesh
    self._outputs: list[tuple[jax.Array, int]] = []

  def add(self, rows: np.ndarray) -> None:
    if len(rows) > self.batch_size:
      raise ValueError(f"{len(rows)} rows do not fit a batch of {self.batch_size}")
    padded = pad_rows(rows, self.batch_size)
    if self.mesh is not None:
      padded = jax.device_put(padded, batch_sharding(self.mesh))
    self._outputs.append((self.encode(padded), len(rows)))

  def result(self) -> np.ndarray:
    """[rows added, D] float32, counted (`counting_embeddings`)."""
    z = np.concatenate([np.asarray(z)[:n] for z, n in self._outputs])
    _counted(EmbeddingCount.of(z))  # on the host already: a numpy pass, no device program
    return z


def embed_rows(encode: Callable[[Any], jax.Array], rows: np.ndarray, batch_size: int, mesh=None
               ) -> np.ndarray:
  """[N, ...] -> [N, D], encoded in padded batches of `batch_size`."""
  batches = PaddedBatches(encode, batch_size, mesh)
  for start in range(0, len(rows), batch_size):
    batches.add(rows[start:start + batch_size])
  return batches.result()


# ----------------------------------------------------------------------------------------------
# One round: parameters bound, each data read embedded once.
# ----------------------------------------------------------------------------------------------
def source_key(source) -> Hashable:
  """What identifies the items `source` yields: the items themselves for triple files (sources
  built apart from the same file and split share a pass), the shards for ArrayRecord, the
  parameters of generated shapes, else the object."""
  triples = getattr(source, "triples", None)
  if triples is not None:
    text = repr((getattr(source, "image_dir", None), triples))
    return ("triples", hashlib.sha256(text.encode()).hexdigest())
  if isinstance(source, sources.ArrayRecordSource):
    return ("array_record", tuple(source.paths))
  if isinstance(source, ShapesSource):
    return ("shapes", repr(source))
  return ("object", id(source))


def data_key(source, data_config: ml_collections.ConfigDict) -> Hashable:
  """The key of the embeddings `source` read with `data_config` gives."""
  return source_key(source), tuple((k, repr(data_config.get(k))) for k in _PIPELINE_FIELDS)


class EvalRound:
  """One evaluation of one set of parameters. `triples` embeds a source once and hands the same
  (read-only) arrays to every evaluator asking for it; `passes` counts the pipeline passes."""

  def __init__(self, encoder: Encoder, params: Params, mesh=None):
    self.encoder = encoder
    self.params = tuple(params)
    self.mesh = mesh
    self.passes = 0
    # Each pass's embeddings and their count, counted again for every evaluator they are handed to.
    self._triples: dict[Hashable, tuple[dict[str, Any], EmbeddingCount]] = {}

  @classmethod
  def of_model(cls, model: CLIP, mesh=None) -> EvalRound:
    """A round for `model` alone; its encoder compiles afresh (a trainer keeps one encoder)."""
    return cls(*Encoder.of(model), mesh)

  @property
  def config(self) -> CLIPConfig:
    return self.encoder.config

  def encode_images(self, images: jax.Array) -> jax.Array:
    """[B, S, S, 3] -> [B, D] unit rows (on device)."""
    return self.encoder.images(self.params, images)

  def encode_texts(self, tokens: jax.Array) -> jax.Array:
    """[N, L] -> [N, D] unit rows (on device)."""
    return self.encoder.texts(self.params, tokens)

  def triples(self, source, data_config: ml_collections.ConfigDict, label: str = "triples"
              ) -> dict[str, Any]:
    """{"ids": [N], "image_keys": [N] (rows sharing a key show the same image), "image": [N, D],
    "caption"/"paraphrase"/"negation": [N, D]} (numpy float32, read-only: shared). Records the
    pipeline's bad-input policy skips are absent, ids too. `label` names the pass's progress
    lines (the evaluator asking first). Counted (`counting_embeddings`) at every call."""
    key = data_key(source, data_config)
    if key not in self._triples:
      with counting_embeddings() as count:
        self._triples[key] = self._embed_triples(source, data_config, label), count
    z, count = self._triples[key]
    _counted(count)
    return z

  def _embed_triples(self, source, data_config: ml_collections.ConfigDict, label: str
                     ) -> dict[str, Any]:
    self.passes += 1
    pipeline = input_pipeline.make_pipeline(source, data_config, train=False, process_index=0,
                                            process_count=1)
    batch_size, k = data_config.batch_size, len(CAPTION_KINDS)
    images = PaddedBatches(self.encode_images, batch_size, self.mesh)
    texts = PaddedBatches(self.encode_texts, k * batch_size, self.mesh)  # one call on 3B captions
    ids: list[str] = []
    image_keys: list[str] = []
    # Every process embeds the whole source; the first one speaks for them.
    with Progress(len(source), f"eval {label}", unit="items",
                  enabled=jax.process_index() == 0) as meter:
      try:
        for batch in pipeline:
          images.add(normalize(batch["image"], data_config.normalization))
          tokens = batch["tokens"]  # [B, 3, L] -> [3B, L]: one call on the 3B captions
          texts.add(tokens.reshape(-1, tokens.shape[-1]))
          ids.extend(str(i) for i in batch["id"])
          image_keys.extend(str(k) for k in batch["image_key"])
          meter.update(len(batch["id"]))
      finally:
        pipeline.close()
      # Read back inside: the last line's time includes the device's work still queued.
      zi, z = images.result(), texts.result().reshape(len(ids), k, -1)
    for array in (zi, z):
      array.setflags(write=False)
    return {"ids": ids, "image_keys": image_keys, "image": zi,
            **{kind: z[:, i] for i, kind in enumerate(CAPTION_KINDS)}}


# ----------------------------------------------------------------------------------------------
# Evaluators.
# ----------------------------------------------------------------------------------------------
def warn_if_few(label: str, items: int | None) -> None:
  """One warning line when an evaluator scores fewer than MIN_EVAL_ITEMS items (None: unknown
  before a round)."""
  if items is not None and items < MIN_EVAL_ITEMS:
    logger.warning("evals.%s has %d item(s), fewer than MIN_EVAL_ITEMS=%d: its metrics mean "
                   "little (one item scores 0 or 1; recall@k is 1 once k reaches the gallery)",
                   label, items, MIN_EVAL_ITEMS)


class Evaluator:
  """`evaluate(round)` yields (metric name, value) from a round's embeddings (`compute`)."""

  # "<name> (<split>)": what its progress lines and warnings call it (`make_evaluator` sets it).
  label: str = ""

  def title(self) -> str:
    return self.label or type(self).__name__

  def size(self) -> int | None:
    """Items it scores, where known before a round (None: unknown)."""
    return None

  def evaluate(self, round_: EvalRound) -> Metrics:
    """`compute`'s metrics; all NaN, with one warning, when an embedding they were computed from
    holds NaN or Inf (finite weights can still give one): comparisons with NaN are false, so such
    a model would otherwise score 0, or a number from garbage, without a word."""
    with counting_embeddings() as count:
      results = list(self.compute(round_))
    if count.nonfinite:
      logger.warning("evals.%s: %d of %d embeddings hold NaN or Inf: its metrics are reported as "
                     "NaN", self.title(), count.nonfinite, count.total)
      results = [(name, float("nan")) for name, _ in results]
    return iter(results)

  def compute(self, round_: EvalRound) -> Metrics:
    """(metric name, value) from the round's embeddings (each evaluator's own)."""
    raise NotImplementedError

  def run(self, model: CLIP, mesh=None) -> Metrics:
    """`evaluate` on a one-off round for `model` (compiles for it)."""
    return self.evaluate(EvalRound.of_model(model, mesh))


class TripleEvaluator(Evaluator):
  """Scores the triple embeddings of `source` read with `data_config` (`score`); evaluators
  naming the same data in one round share its pass."""

  def __init__(self, source, data_config: ml_collections.ConfigDict):
    self.source = source
    self.data_config = data_config

  def size(self) -> int:
    return len(self.source)

  def compute(self, round_: EvalRound) -> Metrics:
    return self.score(round_.triples(self.source, self.data_config, self.title()))

  def score(self, z: dict[str, Any]) -> Metrics:
    """Metrics from `EvalRound.triples`' embeddings."""
    raise NotImplementedError
