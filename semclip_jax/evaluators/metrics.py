"""Metric functions on L2-normalised embeddings (numpy). Ties always count as failures."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def cosines(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """[Q, D] queries · [K, D] keys -> [Q, K] float32 scores, computed in float64 and rounded.

  BLAS sums each dot product in an order that depends on where it falls in the output (its edge
  kernels differ), so keys with equal embeddings can score a few ulps apart, and a tie that must
  count as a failure turns into a hit or a miss by position and by machine. Products of float32
  inputs are exact in float64, and the sums' rounding there (about 1e-16) vanishes in the rounding
  to float32: equal keys score equal. Float64 inputs (cast once by the caller) are not copied."""
  return (np.asarray(queries, np.float64) @ np.asarray(keys, np.float64).T).astype(np.float32)


def ccneg_accuracy(zi: np.ndarray, zt: np.ndarray, zn: np.ndarray) -> float:
  """Share of images with cos(image, original) > cos(image, negation); chance is 0.5."""
  return float(np.mean(np.sum(zi * zt, -1) > np.sum(zi * zn, -1)))


def scaled_accuracy(accuracy: float) -> float:
  """max(0, 2·(acc − 0.5)): 0 at chance, 1 when perfect."""
  return max(0.0, 2.0 * (accuracy - 0.5))


def _recall(queries: np.ndarray, query_labels: np.ndarray, keys: np.ndarray,
            key_labels: np.ndarray, ks: Sequence[int], chunk: int) -> dict[int, float]:
  """Recall@k of `queries` [Q, D] against `keys` [K, D], a key matching a query when their labels
  ([Q], [K]) are equal. A query's rank is the number of non-matching keys scoring at least as high
  as its best-scoring match (so a tie is a failure, `cosines`); a hit is rank < k. Scores are
  computed `chunk` queries at a time, so memory stays at the keys in float64 and a few [chunk, K]
  arrays (about 1 GB for 256 x 200k)."""
  hits = {k: 0 for k in ks}
  keys = np.asarray(keys, np.float64)  # once, not per chunk
  for start in range(0, len(queries), chunk):
    scores = cosines(queries[start:start + chunk], keys)  # [chunk, K]
    match = query_labels[start:start + chunk, None] == key_labels[None, :]
    best = np.max(np.where(match, scores, -np.inf), axis=1)
    rank = np.sum((scores >= best[:, None]) & ~match, axis=1)
    # A query without matches (an image with no text) is a miss whatever k, as in CLIP_benchmark.
    found = np.any(match, axis=1)
    for k in ks:
      hits[k] += int(np.sum(found & (rank < k)))
  return {k: hits[k] / len(queries) for k in ks}


def row_retrieval(queries: np.ndarray, keys: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                  chunk: int = 256) -> dict[int, float]:
  """Per-row protocol (the official SemCLIP code's): query i's only match is key i ([N, D] each).

  Another row showing the same image is a distractor whose embedding ties with the match, so a
  perfect model scores near 0 when images repeat; use `image_retrieval` for such data.
  """
  if len(queries) != len(keys):
    raise ValueError(f"{len(queries)} queries, {len(keys)} keys: the per-row protocol pairs them")
  rows = np.arange(len(keys))
  return _recall(queries, rows, keys, rows, ks, chunk)


def image_retrieval(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray,
                    ks: Sequence[int] = (1, 5, 10), chunk: int = 256
                    ) -> dict[str, dict[int, float]]:
  """Retrieval by image identity (LAION CLIP_benchmark / open_clip): `images` [M, D] holds each
  distinct image once, `texts` [N, D], `text_image` [N] the index in `images` of each text's image.

  `"t2i"`: share of texts whose image ranks in the top k of the M images; `"i2t"`: share of images
  with any of their texts in the top k of the N texts. Each maps k -> recall.
  """
  text_image = np.asarray(text_image)
  if text_image.shape != (len(texts),):
    raise ValueError(f"text_image has shape {text_image.shape}; want ({len(texts)},)")
  if len(text_image) and (text_image.min() < 0 or text_image.max() >= len(images)):
    raise ValueError(f"text_image indices must lie in [0, {len(images)})")
  image_ids = np.arange(len(images))
  return {"t2i": _recall(texts, text_image, images, image_ids, ks, chunk),
          "i2t": _recall(images, image_ids, texts, text_image, ks, chunk)}


def image_groups(image_keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Per-row image keys [N] -> (first row of each distinct image [M], each row's image index
  [N]), images numbered in order of first appearance."""
  number: dict[str, int] = {}
  text_image = np.fromiter((number.setdefault(key, len(number)) for key in image_keys),
                           dtype=np.int64, count=len(image_keys))
  # Numbers are given in order of first appearance, so unique's sorted order is that order too.
  return np.unique(text_image, return_index=True)[1], text_image
