"""Data: tokenizer, image transforms, triple sources and the grain input pipeline.

`default_config()` describes a dataset and its pipeline; `make_source(config, split)` builds the
source it names: the built-in shapes, a CSV/JSONL + image folder, or ArrayRecord shards.
"""

from __future__ import annotations

import os

import ml_collections

from semclip_jax.data import input_pipeline, sources

KINDS = ("shapes", "csv", "array_record")


def default_config() -> ml_collections.ConfigDict:
  c = input_pipeline.default_config()
  c.kind = "shapes"  # one of KINDS
  c.path = ""  # csv: the CSV/JSONL of triples; array_record: the folder of training shards
  c.eval_path = ""  # array_record: the folder of evaluation shards
  c.image_dir = ""  # csv: folder the image file names are relative to
  c.layout = ml_collections.config_dict.placeholder(str)  # csv: ccneg | sugarcrepe_pp; unset = detect
  c.split_column = ml_collections.config_dict.placeholder(str)  # csv: explicit split column
  c.ratios = (0.8, 0.1, 0.1)  # csv: train/val/test shares of the *images*
  c.split_seed = 0  # csv: seed of the image-level split
  c.ccneg_official = False  # csv: CC-Neg's split (last 40,000 items evaluate)
  c.train_split = "train"
  c.eval_split = "test"
  c.shapes_size = 20_000  # shapes: training items (each rendered on the fly)
  c.shapes_eval_size = 512  # shapes: evaluation items (held-out colour/shape pairs)
  c.shapes_render_size = 64  # shapes: side at which scenes are drawn before the crop
  return c


def make_source(config: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` for the dataset `config` describes."""
  if config.kind == "shapes":
    from semclip_jax.data.shapes import ShapesSource  # pylint: disable=import-outside-toplevel

    train = split == config.train_split
    return ShapesSource(split="train" if train else "eval", seed=config.split_seed,
                        size=config.shapes_size if train else config.shapes_eval_size,
                        image_size=config.shapes_render_size)
  if config.kind == "csv":
    for field in ("path", "image_dir"):
      if not config[field] or not os.path.exists(config[field]):
        raise FileNotFoundError(f"config.data.{field}={config[field]!r} does not exist")
    return sources.csv_source(config.path, config.image_dir, split=split, layout=config.layout,
                              split_column=config.split_column, ratios=tuple(config.ratios),
                              split_seed=config.split_seed, ccneg_official=config.ccneg_official)
  if config.kind == "array_record":
    field = "path" if split == config.train_split else "eval_path"
    if not config[field] or not os.path.exists(config[field]):
      raise FileNotFoundError(f"config.data.{field}={config[field]!r} does not exist")
    return sources.ArrayRecordSource(config[field])
  raise ValueError(f"unknown config.data.kind {config.kind!r}; choose one of {list(KINDS)}")
