"""Metric functions on L2-normalised embeddings (numpy). Ties always count as failures."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ccneg_accuracy(zi: np.ndarray, zt: np.ndarray, zn: np.ndarray) -> float:
  """Share of images with cos(image, original) > cos(image, negation); chance is 0.5."""
  return float(np.mean(np.sum(zi * zt, -1) > np.sum(zi * zn, -1)))


def scaled_accuracy(accuracy: float) -> float:
  """max(0, 2·(acc − 0.5)): 0 at chance, 1 when perfect."""
  return max(0.0, 2.0 * (accuracy - 0.5))


def topk_retrieval(queries: np.ndarray, keys: np.ndarray, ks: Sequence[int] = (1, 5, 10),
                   chunk: int = 1024) -> dict[int, float]:
  """Query i's match is key i. Recall@k: share of queries whose match ranks in the top k, the rank
  being the number of *other* keys scoring at least as high (so a tie is a failure)."""
  hits = {k: 0 for k in ks}
  for start in range(0, len(queries), chunk):
    scores = queries[start:start + chunk] @ keys.T
    rows = np.arange(scores.shape[0])
    positive = scores[rows, start + rows]
    rank = np.sum(scores >= positive[:, None], axis=1) - 1  # minus the match itself
    for k in ks:
      hits[k] += int(np.sum(rank < k))
  return {k: hits[k] / len(queries) for k in ks}
