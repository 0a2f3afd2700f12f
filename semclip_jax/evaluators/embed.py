"""Embeddings of a triple source, computed in jitted, sharded batches.

The eval pipeline's last batch may be short: it is padded to the full batch (so one compilation
serves every batch and the batch splits evenly over devices) and the padded rows are dropped, so
every item is counted exactly once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from semclip_jax.data import input_pipeline
from semclip_jax.models.clip import CLIP
from semclip_jax.sharding import batch_sharding

CAPTION_KINDS = ("caption", "paraphrase", "negation")


def unit(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def make_encode_fn(model: CLIP):
  """jitted (images [B,S,S,3], tokens [B,3,L]) -> (zi [B,D], z [B,3,D]), L2-normalised."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def encode(state, images, tokens):
    module = nnx.merge(graphdef, state)
    b, k, length = tokens.shape
    zi = module.encode_image(images)
    z = module.encode_text(tokens.reshape(b * k, length)).reshape(b, k, -1)
    return unit(zi), unit(z)

  return lambda images, tokens: encode(state, images, tokens)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)]) if len(x) < rows else x


def embed_source(model: CLIP, source, data_config: ml_collections.ConfigDict, mesh=None
                 ) -> dict[str, Any]:
  """{"ids": [N], "image": [N, D], "caption"/"paraphrase"/"negation": [N, D]} as numpy float32.

  Records the pipeline's bad-input policy skips are absent (their ids too).
  """
  encode = make_encode_fn(model)
  pipeline = input_pipeline.make_pipeline(source, data_config, train=False, process_index=0,
                                          process_count=1)
  ids, images, texts = [], [], []
  try:
    for batch in pipeline:
      n = len(batch["id"])
      full = data_config.batch_size
      arrays = [pad_rows(batch["image"], full), pad_rows(batch["tokens"], full)]
      if mesh is not None:
        arrays = [jax.device_put(a, batch_sharding(mesh)) for a in arrays]
      zi, z = encode(*arrays)
      ids.extend(str(i) for i in batch["id"])
      images.append(np.asarray(zi)[:n])
      texts.append(np.asarray(z)[:n])
  finally:
    pipeline.close()
  texts = np.concatenate(texts)
  return {"ids": ids, "image": np.concatenate(images),
          **{kind: texts[:, i] for i, kind in enumerate(CAPTION_KINDS)}}
