"""Image embeddings computed once, for training with a frozen image tower.

`data.cache_image_embeddings`: with the image tower frozen and a deterministic training transform
(`data.train_crop="center"`, or `data.resize="squash"`), an image's embedding is the same in
every epoch: the paper's setting (many epochs over CC-Neg or SugarCrepe++) would decode, resize
and encode the same JPEGs again each time. Here the first pass writes each distinct image's
embedding once; training then reads embeddings and captions only, and the step skips the image
tower (`train_step.forward`).

Keys. A cache is one folder `<cache_dir>/<fingerprint>`, the fingerprint being a hash of
everything an embedding depends on: the image tower's weights (`weights_fingerprint`, an exact
integer checksum of every parameter's bits, computed on the device, so sharded parameters need no
gathering), the compute dtype, the transform (size, resize, crop, draft decoding, normalisation)
and the records (their count and their image keys, in order). A changed model, transform or
split gets a new folder and can never read a stale one. Within a folder, rows are the distinct
`image_key`s in order of first appearance (`Plan`), so an image shared by several triples
(SugarCrepe++) is encoded once.

Files. `shard-<j>-of-<n>.npy` holds float32 [rows, D] embeddings of rows [j·R, (j+1)·R) and
`shard-<j>-of-<n>.errors.json` {row offset: reason} for the images that could not be read, which
training then skips and counts exactly as the uncached pipeline would. Each file is written
atomically, errors first: the `.npy` marks a finished shard, so a killed build continues with
the missing shards only. Process p of P builds the shards j ≡ p (mod P) with its own devices,
then all wait at one barrier (the cache folder must be shared, as the workdir is).

A `gs://` cache folder (under a gs:// workdir, or `data.image_embedding_cache_dir`) works the same
way: each file is written locally and uploaded as one object, which the bucket shows only when
complete, so the `.npy` still marks a finished shard. Readers memory-map the shards, which needs
local files: `CachedSource` reads checked local copies (`storage.cached_local_copy`, in the host's
cache, reused while the objects are unchanged), downloaded once when it is built.

The train state is untouched (the frozen parameters stay in it), so checkpoints of cached and
uncached runs are interchangeable and a run may switch the cache on or off when it resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from semclip_jax import atomic_io, sharding, storage, train_step
from semclip_jax.data import input_pipeline, sources
from semclip_jax.data.tokenizer import CLIPTokenizer

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1
SHARD_ROWS = 4096  # distinct images per shard file
VISION = "model.vision."  # the image tower's parameters, as train states name them


class ImageEmbeddingCacheError(RuntimeError):
  """The cache cannot be used as configured (the tower trains, the crop is random, a shard is
  missing after the build)."""


# ----------------------------------------------------------------------------------------------
# What may be cached, and under which key.
# ----------------------------------------------------------------------------------------------
def check_cacheable(config: ml_collections.ConfigDict, trained_paths: Sequence[str]) -> None:
  """Raises ImageEmbeddingCacheError unless the image tower is frozen and the training
  transform deterministic (then an image's embedding never changes during the run)."""
  trained = [p for p in trained_paths if p.startswith(VISION)]
  if trained:
    raise ImageEmbeddingCacheError(
        f"config.data.cache_image_embeddings: the image tower trains ({len(trained)} parameters, "
        f"e.g. {trained[0]}); cached embeddings need it frozen: config.optim.freeze = "
        "config.FREEZE_IMAGE_TOWER, or set cache_image_embeddings=False")
  if config.data.resize != "squash" and config.data.train_crop != "center":
    raise ImageEmbeddingCacheError(
        f"config.data.cache_image_embeddings: the training crop is random (data.train_crop="
        f"{config.data.train_crop!r}), so an image's embedding changes every epoch; use "
        "data.train_crop='center' (or data.resize='squash'), or set cache_image_embeddings=False")


def transform_of(data: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings that decide the pixels the image tower sees in training."""
  return {"image_size": data.image_size, "resize": data.resize,
          "crop": None if data.resize == "squash" else data.train_crop,
          "jpeg_draft": bool(data.get("jpeg_draft", False)), "normalization": data.normalization}


def weights_fingerprint(tree: Any) -> str:
  """sha256 of every leaf's path, shape, dtype and two exact uint32 checksums of its bits (a plain
  and a position-weighted sum, mod 2³²): any changed bit of any parameter changes it. Computed
  where the arrays live; sharded (even multi-host) arrays need no gathering."""
  flat = [(sharding.path_str(path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
  placed = getattr(flat[0][1], "sharding", None) if flat else None
  # Replicated sums on a mesh, so every process holds them whole (read from its first shard).
  replicate = ({"out_shardings": sharding.replicated(placed.mesh)}
               if isinstance(placed, jax.sharding.NamedSharding) else {})

  @functools.partial(jax.jit, **replicate)
  def checksums(leaves):
    sums = []
    for x in leaves:
      bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32).reshape(-1)
      weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
      sums.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32),
                             jnp.sum(bits * weights, dtype=jnp.uint32)]))
    return sums

  values = [np.asarray(s.addressable_data(0)) for s in checksums([leaf for _, leaf in flat])]
  text = json.dumps([(path, list(leaf.shape), str(leaf.dtype), v.tolist())
                     for (path, leaf), v in zip(flat, values)])
  return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which record shows which distinct image: rows in order of first appearance."""
  keys: list[str]  # [U] the distinct image keys
  row_of: np.ndarray  # int32 [N]: record -> its image's row
  first_record: np.ndarray  # int32 [U]: row -> the first record showing it

  @classmethod
  def of(cls, source) -> Plan:
    rows: dict[str, int] = {}
    row_of = np.empty(len(source), np.int32)
    first: list[int] = []
    for i in range(len(source)):
      key = sources.record_metadata(source, i).get("image_key")
      key = f"record {i}" if key is None else str(key)
      if key not in rows:
        rows[key] = len(rows)
        first.append(i)
      row_of[i] = rows[key]
    return cls(list(rows), row_of, np.asarray(first, np.int32))

  def keys_hash(self) -> str:
    """sha256 of every record's image key, in order: the records' identity in the fingerprint."""
    digest = hashlib.sha256()
    for row in self.row_of:
      digest.update(self.keys[row].encode() + b"\n")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The folder: shards of embeddings and the reasons images were skipped.
# ----------------------------------------------------------------------------------------------
class ImageEmbeddingCache:
  """The shard files of one fingerprint's folder; `build` fills the missing ones."""

  def __init__(self, folder: str, plan: Plan, shard_rows: int = SHARD_ROWS):
    self.folder = folder
    self.plan = plan
    self.shard_rows = shard_rows
    self.num_shards = max(1, -(-len(plan.keys) // shard_rows))

  def shard_path(self, j: int) -> str:
    return storage.join(self.folder, f"shard-{j:05d}-of-{self.num_shards:05d}.npy")

  def errors_path(self, j: int) -> str:
    return self.shard_path(j)[:-len(".npy")] + ".errors.json"

  def missing_shards(self) -> list[int]:
    if storage.is_remote(self.folder):  # one listing, not one request per shard
      try:
        present = set(storage.listdir(self.folder))
      except FileNotFoundError:
        present = set()
      return [j for j in range(self.num_shards)
              if storage.basename(self.shard_path(j)) not in present]
    return [j for j in range(self.num_shards) if not os.path.exists(self.shard_path(j))]

  def build(self, source, preprocess: input_pipeline.Preprocess,
            encode: Callable[[np.ndarray], np.ndarray], batch_size: int, dim: int, *,
            process_index: int = 0, process_count: int = 1) -> list[int]:
    """Writes this process's missing shards (j ≡ process_index mod process_count): each image
    read with `preprocess` (as training reads it), `encode`d (uint8 [batch_size, S, S, 3] ->
    float32 [batch_size, dim]) in full batches. Returns the shards written."""
    mine = [j for j in self.missing_shards() if j % process_count == process_index]
    storage.makedirs(self.folder)
    atomic_io.remove_stray_temps(storage.join(self.folder, "shard-*"))  # a killed build's
    for j in mine:
      records = self.plan.first_record[j * self.shard_rows:(j + 1) * self.shard_rows]
      table = np.zeros((len(records), dim), np.float32)  # rows of unreadable images stay 0
      errors: dict[str, str] = {}
      for start in range(0, len(records), batch_size):
        images, rows = [], []
        for row, record in enumerate(records[start:start + batch_size], start):
          pixels, error = preprocess.pixels(source[int(record)])
          if error is None:
            images.append(pixels)
            rows.append(row)
          else:
            errors[str(row)] = error
        if images:  # padded to the full batch: one compilation serves every batch
          padded = np.zeros((batch_size, *images[0].shape), np.uint8)
          padded[:len(images)] = images
          table[rows] = np.asarray(encode(padded), np.float32)[:len(images)]
      atomic_io.write_json(self.errors_path(j), errors)  # first: the .npy marks the shard done
      with atomic_io.replacing(self.shard_path(j)) as tmp:
        with open(tmp, "wb") as f:
          np.save(f, table)
    return mine


class CachedSource:
  """grain source over `source`'s records with their image's cached embedding ("image_embedding",
  float32 [D]) instead of the image, or an "error" for an image that could not be read. No image
  is read or drawn. Shards are memory-mapped on first use, in each process that reads them; a
  gs:// cache's files are first copied to the host's disk (`storage.cached_local_copy`), here."""

  def __init__(self, source, cache: ImageEmbeddingCache):
    self.source = source
    self.folder = cache.folder
    self.row_of = cache.plan.row_of
    self.shard_rows = cache.shard_rows
    files = storage.cached_local_copy(  # local paths as they are
        [path for j in range(cache.num_shards)
         for path in (cache.shard_path(j), cache.errors_path(j))])
    self._paths = list(zip(files[::2], files[1::2]))
    self._shards: dict[int, tuple[np.ndarray, dict[str, str]]] = {}

  def __len__(self) -> int:
    return len(self.row_of)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = sources.record_metadata(self.source, index)
    j, offset = divmod(int(self.row_of[index]), self.shard_rows)
    if j not in self._shards:
      with open(self._paths[j][1], encoding="utf-8") as f:
        self._shards[j] = (np.load(self._paths[j][0], mmap_mode="r"), json.load(f))
    table, errors = self._shards[j]
    if str(offset) in errors:
      return {**record, "error": errors[str(offset)]}
    return {**record, "image_embedding": np.array(table[offset])}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_shards": {}}  # workers map the files themselves

  def __repr__(self) -> str:
    return f"CachedSource({self.source!r}, folder={self.folder!r})"


# ----------------------------------------------------------------------------------------------
# The trainer's entry point.
# ----------------------------------------------------------------------------------------------
def vision_encoder(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                   normalization: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
  """(uint8 [B, S, S, 3] -> float32 [B, D], D) with the train state's image tower, as the step
  computes it (`train_step.model_images`, then `encode_image`), on this process's devices only
  (each process builds its own shards); parameters split across processes are gathered once."""
  model = nnx.merge(graphdef, params, rest).model
  vision_graph, vision_state = nnx.split(model.vision)
  local = sharding.make_mesh(devices=jax.local_devices())

  def local_copy(x):
    if not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      x = multihost_utils.process_allgather(x, tiled=True)
    return jax.device_put(x, sharding.replicated(local))

  vision_state = jax.tree.map(local_copy, vision_state)

  @jax.jit
  def encode(state, images):
    return nnx.merge(vision_graph, state)(train_step.model_images(images, normalization))

  return (lambda images: np.asarray(encode(vision_state, jax.device_put(
      images, sharding.batch_sharding(local)))), model.config.projection_dim)


def prepare(config: ml_collections.ConfigDict, workdir: str, graphdef: nnx.GraphDef,
            state: Any, source, tokenizer: CLIPTokenizer | None = None) -> CachedSource:
  """The training source with cached image embeddings: the cache of this tower, transform and
  split is found or built (this process's share; then one barrier), then read."""
  check_cacheable(config, [sharding.path_str(p) for p, _ in nnx.to_flat_state(state.params)])
  start = time.perf_counter()
  plan = Plan.of(source)
  parts = {"format": FORMAT_VERSION, "tower": weights_fingerprint(state.rest["model"]["vision"]),
           "dtype": config.model.dtype, "transform": transform_of(config.data),
           "records": len(plan.row_of), "keys": plan.keys_hash()}
  root = config.data.get("image_embedding_cache_dir") or storage.join(workdir,
                                                                        "image_embedding_cache")
  storage.check(root, "config.data.image_embedding_cache_dir")
  cache = ImageEmbeddingCache(storage.join(root, fingerprint(parts)[:24]), plan)
  built = []
  if cache.missing_shards():
    preprocess = input_pipeline.Preprocess(
        tokenizer or CLIPTokenizer(context_length=config.data.context_length),
        config.data.image_size, config.data.context_length, "center", config.data.crop_scale,
        resize=config.data.resize, jpeg_draft=bool(config.data.get("jpeg_draft", False)),
        max_image_pixels=config.data.max_image_pixels)
    encode, dim = vision_encoder(graphdef, state.params, state.rest, config.data.normalization)
    per_device = max(1, config.data.batch_size // jax.device_count())
    built = cache.build(source, preprocess, encode, per_device * jax.local_device_count(), dim,
                        process_index=jax.process_index(), process_count=jax.process_count())
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      multihost_utils.sync_global_devices("image embedding cache built")
  missing = cache.missing_shards()
  if missing:
    raise ImageEmbeddingCacheError(
        f"image embedding cache {cache.folder}: shard(s) {missing[:5]} missing after the build; "
        "every process must see the same cache folder (config.data.image_embedding_cache_dir "
        "on a shared filesystem, or gs://)")
  if jax.process_index() == 0:
    atomic_io.write_json(storage.join(cache.folder, "meta.json"), parts, indent=2)
  logger.info("image embedding cache %s: %d records, %d distinct images, %d shards (%d built "
              "here) in %.1f s", cache.folder, len(plan.row_of), len(plan.keys), cache.num_shards,
              len(built), time.perf_counter() - start)
  return CachedSource(source, cache)
