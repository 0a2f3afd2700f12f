"""CC-Neg original-over-negation accuracy on any triple source."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import CAPTION_KINDS, Metrics, TripleEvaluator

# Text–text cosines kept beside the image–text ones, by key: (caption kind, caption kind). They
# are the paper's distance analysis: how far a paraphrase, and a negation, sit from the original.
TEXT_PAIRS = {"original_paraphrase": ("caption", "paraphrase"),
              "original_negation": ("caption", "negation")}


class CCNegEvaluator(TripleEvaluator):
  """Yields `accuracy` (cos(i, original) > cos(i, negation)), `scaled_accuracy`, `items`.

  After `evaluate`, `similarities` holds the per-item cosines the report draws: under each caption
  kind ("caption", "paraphrase", "negation") cos(image, that caption), and under each TEXT_PAIRS
  key cos(original, paraphrase / negation).
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict):
    super().__init__(source, data_config)
    self.similarities: dict[str, np.ndarray] = {}

  def score(self, z: dict[str, Any]) -> Metrics:
    cosines = lambda a, b: np.sum(a * b, axis=-1)  # the rows of z are unit vectors
    self.similarities = {**{kind: cosines(z["image"], z[kind]) for kind in CAPTION_KINDS},
                         **{key: cosines(z[a], z[b]) for key, (a, b) in TEXT_PAIRS.items()}}
    accuracy = metrics.ccneg_accuracy(z["image"], z["caption"], z["negation"])
    yield "accuracy", accuracy
    yield "scaled_accuracy", metrics.scaled_accuracy(accuracy)
    yield "items", float(len(z["ids"]))
