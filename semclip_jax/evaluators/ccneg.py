"""CC-Neg original-over-negation accuracy on any triple source."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import CAPTION_KINDS, Metrics, TripleEvaluator


class CCNegEvaluator(TripleEvaluator):
  """Yields `accuracy` (cos(i, original) > cos(i, negation)), `scaled_accuracy`, `items`.

  After `evaluate`, `similarities` holds the per-item cos(image, original / paraphrase /
  negation): the distributions the report draws.
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict):
    super().__init__(source, data_config)
    self.similarities: dict[str, np.ndarray] = {}

  def score(self, z: dict[str, Any]) -> Metrics:
    self.similarities = {kind: np.sum(z["image"] * z[kind], axis=-1) for kind in CAPTION_KINDS}
    accuracy = metrics.ccneg_accuracy(z["image"], z["caption"], z["negation"])
    yield "accuracy", accuracy
    yield "scaled_accuracy", metrics.scaled_accuracy(accuracy)
    yield "items", float(len(z["ids"]))
