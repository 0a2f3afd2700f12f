"""The official SemCLIP code's validation metrics (src/evaluation.py, `_compute_and_log_metrics` in
src/model.py), under names that say which protocol they use."""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import Metrics, TripleEvaluator
from semclip_jax.evaluators.retrieval import RETRIEVAL_TEXTS


class OfficialEvaluator(TripleEvaluator):
  """Yields `rows_t2i_top{k}_original` and `rows_t2i_top{k}_paraphrase` for k in `ks`, `accuracy`
  (original over negation), `scaled_accuracy` and `combined_score` = (top-1 original + top-1
  paraphrase + scaled accuracy) / 3.

  The per-row protocol, kept for like-for-like comparison with the paper: item i's image is the
  only match of item i's caption. When images repeat (several captions per image) the other rows'
  copies of the image tie with the match, so even a perfect model fails; `RetrievalEvaluator`
  scores by image identity instead. Two departures, both outside random-embedding data: ties
  count as failures (the official `torch.topk` breaks them by position), and for k above the item
  count every item is a hit (the official code logs top-1 there).
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict,
               ks: Sequence[int] = (1, 3, 5)):
    super().__init__(source, data_config)
    self.ks = tuple(ks)

  def score(self, z: dict[str, Any]) -> Metrics:
    top1 = 0.0
    for kind, name in RETRIEVAL_TEXTS:
      # Top-1 enters the combined score even when `ks` leaves it out.
      recalls = metrics.row_retrieval(z[kind], z["image"], sorted({1, *self.ks}))
      for k in self.ks:
        yield f"rows_t2i_top{k}_{name}", recalls[k]
      top1 += recalls[1]
    accuracy = metrics.ccneg_accuracy(z["image"], z["caption"], z["negation"])
    scaled = metrics.scaled_accuracy(accuracy)
    yield "accuracy", accuracy
    yield "scaled_accuracy", scaled
    yield "combined_score", (top1 + scaled) / 3.0
