"""Text-to-image and image-to-text retrieval, for original captions and for paraphrases."""

from __future__ import annotations

from typing import Any

import ml_collections

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import Metrics, TripleEvaluator


class RetrievalEvaluator(TripleEvaluator):
  """Yields e.g. `t2i_top1_original`, `i2t_top5_paraphrase` for k in `ks`.

  Item i's image is the match of item i's captions, as in the paper's evaluation; a dataset with
  several captions per image therefore counts the other copies of the image as distractors.
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict, ks=(1, 5, 10)):
    super().__init__(source, data_config)
    self.ks = tuple(ks)

  def score(self, z: dict[str, Any]) -> Metrics:
    for kind, name in (("caption", "original"), ("paraphrase", "paraphrase")):
      for direction, (queries, keys) in (("t2i", (z[kind], z["image"])),
                                         ("i2t", (z["image"], z[kind]))):
        for k, value in metrics.topk_retrieval(queries, keys, self.ks).items():
          yield f"{direction}_top{k}_{name}", value
