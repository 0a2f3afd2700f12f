"""Data: tokenizer, image transforms, triple sources and the grain input pipeline.

`default_config()` describes a dataset, its splits and its pipeline; `make_source(config, split)`
builds the source of one split ("train", "val" or "test"): the built-in shapes, a CSV/JSONL +
image folder, or ArrayRecord shards. Every path may be local or gs:// (`semclip_jax.storage`).
"""

from __future__ import annotations

import ml_collections

from semclip_jax import storage
from semclip_jax.data import input_pipeline, sources

KINDS = ("shapes", "csv", "array_record")


def default_config() -> ml_collections.ConfigDict:
  c = input_pipeline.default_config()
  c.kind = "shapes"  # one of KINDS
  c.path = ""  # csv: the CSV/JSONL of triples; array_record: the folder of training shards
  c.eval_path = ""  # array_record: the folder of validation shards
  c.test_path = ""  # array_record: the folder of test shards
  # array_record with gs:// shards: the host's folder of their local copies (ArrayRecord reads
  # local files only), reused while the objects are unchanged; "" = storage.default_cache_root()
  c.shard_cache_dir = ""
  c.image_dir = ""  # csv: folder the image file names are relative to
  c.layout = ml_collections.config_dict.placeholder(str)  # csv: ccneg | sugarcrepe_pp; unset = detect
  c.split_column = ml_collections.config_dict.placeholder(str)  # csv: explicit split column
  # csv without a split column: "image" splits whole images (no image in two splits); "rows" is
  # the official SemCLIP code's random row split (sizes int(n·ratios[1]), int(n·ratios[2])), which
  # leaks images between train, val and test: for comparison with the paper only.
  c.split_by = "image"
  c.ratios = (0.8, 0.1, 0.1)  # csv: train/val/test shares of the images (split_by="rows": rows)
  c.split_seed = 0  # csv: seed of the split (the official code's row split uses 42)
  c.ccneg_official = False  # csv: CC-Neg's split (last 40,000 items test; overrides split_by)
  # csv with ccneg_official: share of the images of the training part (all but the last 40,000)
  # carved out as "val", seeded by split_seed; CC-Neg's release has no validation split.
  c.ccneg_val_fraction = 0.05
  c.train_split = "train"
  c.eval_split = "val"  # periodic evaluation and checkpoint selection
  c.test_split = "test"  # scored once, at the end
  c.shapes_size = 20_000  # shapes: training items (each rendered on the fly)
  c.shapes_eval_size = 512  # shapes: items of "val" and of "test" (held-out colour/shape pairs)
  c.shapes_render_size = 64  # shapes: side at which scenes are drawn before the crop
  # Training with the image tower frozen and a deterministic crop (train_crop="center", or
  # resize="squash"): each distinct image's embedding is computed once and read back in every
  # epoch, so the step skips the image tower and the input skips decoding
  # (semclip_jax/image_embedding_cache.py). Refused, with the reason, where it cannot apply.
  c.cache_image_embeddings = False
  c.image_embedding_cache_dir = ""  # "" = <workdir>/image_embedding_cache; keyed by fingerprint
  return c


def make_source(config: ml_collections.ConfigDict, split: str | None):
  """The random-access source of `split` for the dataset `config` describes (csv: None = every
  row)."""
  if config.kind == "shapes":
    from semclip_jax.data.shapes import ShapesSource  # pylint: disable=import-outside-toplevel

    if split == config.train_split:
      split, size = "train", config.shapes_size
    elif split in ("val", "test"):
      size = config.shapes_eval_size
    else:
      raise ValueError(f"shapes has no split {split!r}; it has config.data.train_split="
                       f"{config.train_split!r}, 'val' and 'test'")
    return ShapesSource(split=split, seed=config.split_seed, size=size,
                        image_size=config.shapes_render_size)
  if config.kind == "csv":
    for field in ("path", "image_dir"):
      if not config[field] or not storage.exists(storage.check(config[field],
                                                               f"config.data.{field}")):
        raise FileNotFoundError(f"config.data.{field}={config[field]!r} does not exist")
    return sources.csv_source(config.path, config.image_dir, split=split, layout=config.layout,
                              split_column=config.split_column, ratios=tuple(config.ratios),
                              split_seed=config.split_seed, ccneg_official=config.ccneg_official,
                              split_by=config.split_by,
                              ccneg_val_fraction=config.ccneg_val_fraction)
  if config.kind == "array_record":
    field = {config.train_split: "path", config.test_split: "test_path"}.get(split, "eval_path")
    if not config[field] or not storage.exists(storage.check(config[field],
                                                             f"config.data.{field}")):
      raise FileNotFoundError(f"config.data.{field}={config[field]!r} does not exist")
    return sources.ArrayRecordSource(config[field],
                                     cache_dir=config.get("shard_cache_dir") or None)
  raise ValueError(f"unknown config.data.kind {config.kind!r}; choose one of {list(KINDS)}")
