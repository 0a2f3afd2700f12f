"""Text-to-image and image-to-text retrieval by image identity, for original captions and for
paraphrases (the protocol of LAION's CLIP_benchmark and open_clip)."""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import Metrics, TripleEvaluator

# The texts retrieval is scored on: (caption kind in the triples, metric-name suffix).
RETRIEVAL_TEXTS = (("caption", "original"), ("paraphrase", "paraphrase"))


class RetrievalEvaluator(TripleEvaluator):
  """Yields `t2i_recall@{k}_{original,paraphrase}`, `i2t_recall@{k}_{...}` for k in `ks`, and the
  `images` (distinct) and `texts` counts.

  Rows with the same `image_keys` entry show the same image: the gallery holds each distinct image
  once (its first row), a text matches its own image, and an image matches every text of it, so a
  dataset with several captions per image does not count copies of the match as distractors.
  """

  def __init__(self, source, data_config: ml_collections.ConfigDict,
               ks: Sequence[int] = (1, 5, 10)):
    super().__init__(source, data_config)
    self.ks = tuple(ks)

  def score(self, z: dict[str, Any]) -> Metrics:
    gallery, text_image = metrics.image_groups(z["image_keys"])
    images = z["image"][gallery]  # [M, D]
    for kind, name in RETRIEVAL_TEXTS:
      for direction, recalls in metrics.image_retrieval(images, z[kind], text_image,
                                                        self.ks).items():
        for k, value in recalls.items():
          yield f"{direction}_recall@{k}_{name}", value
    yield "images", float(len(gallery))
    yield "texts", float(len(text_image))
