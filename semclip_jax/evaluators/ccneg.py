"""CC-Neg original-over-negation accuracy on any triple source."""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import embed_source


class CCNegEvaluator:
  """Yields `accuracy` (cos(i, original) > cos(i, negation)), `scaled_accuracy`, `items`.

  After `run`, `similarities` holds the per-item cos(image, original / paraphrase / negation):
  the distributions the report draws.
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict):
    self.source = source
    self.data_config = data_config
    self.similarities: dict[str, np.ndarray] = {}

  def run(self, model, mesh=None) -> Iterator[tuple[str, float]]:
    z = embed_source(model, self.source, self.data_config, mesh)
    self.similarities = {kind: np.sum(z["image"] * z[kind], axis=-1)
                         for kind in ("caption", "paraphrase", "negation")}
    accuracy = metrics.ccneg_accuracy(z["image"], z["caption"], z["negation"])
    yield "accuracy", accuracy
    yield "scaled_accuracy", metrics.scaled_accuracy(accuracy)
    yield "items", float(len(z["ids"]))
