"""Zero-shot evaluator: the metric against a brute-force loop, prompt ensembles, and end-to-end
runs on real TFDS datasets that the tests build in array_record format (no TensorFlow, no network).
"""

from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.evaluators import zeroshot
from semclip_jax.evaluators.embed import EvalRound
from semclip_jax.models import create_clip, get_preset
from semclip_jax.sharding import make_mesh

# Solid colours, so a hand-built model can classify them exactly. The label names carry
# underscores, which the evaluator must turn into spaces.
COLOURS = {"dark_red": (255, 0, 0), "dark_green": (0, 255, 0), "dark_blue": (0, 0, 255)}
SIZES = ((40, 52), (64, 48), (33, 33))  # (height, width): portrait, landscape, square


def _build_toy(data_dir: pathlib.Path, dataset_name: str, class_names: list[str], num_images: int
               ) -> None:
  """Prepares a real TFDS dataset `dataset_name`, split "test", under data_dir as array_record.

  Images are given to TFDS as PIL images: it stores those with PIL, whereas numpy images would
  go through tf.image.encode_png and need TensorFlow. The builder is not registered, so the
  evaluator finds the dataset by name on disk, exactly as it finds a prepared catalogue dataset.
  """

  class Toy(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=class_names)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      for i in range(num_images):
        label = i % len(class_names)
        height, width = SIZES[i % len(SIZES)]
        pixels = np.zeros((height, width, 3), np.uint8) + np.uint8(COLOURS[class_names[label]])
        yield i, {"image": Image.fromarray(pixels), "label": label}

  Toy(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> pathlib.Path:
  data_dir = tmp_path_factory.mktemp("tfds")
  _build_toy(data_dir, "zeroshot_toy_a", list(COLOURS), 30)
  _build_toy(data_dir, "zeroshot_toy_b", ["dark_green", "dark_blue"], 20)
  return data_dir


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
  return CLIPTokenizer()


@pytest.fixture(scope="module")
def tiny_model():
  return create_clip(get_preset("tiny"))


class ColourModel(nnx.Module):
  """A CLIP stand-in whose original prompts are perfect on the toy data.

  Image embedding: the mean normalised RGB. Text embedding: the sum of one-hot rows of the words
  "red", "green", "blue"; with `reads_not` it is flipped when the prompt holds "not" (a model that
  understands negation), without it "not" is ignored (a bag-of-words model, as CLIP tends to be).
  """

  def __init__(self, tokenizer: CLIPTokenizer, reads_not: bool):
    self.config = get_preset("tiny")
    ids = {w: tokenizer.encode([w])[0][1] for w in ("red", "green", "blue", "not")}
    table = np.zeros((self.config.text.vocab_size, 3), np.float32)
    for channel, word in enumerate(("red", "green", "blue")):
      table[ids[word], channel] = 1.0
    self.table = nnx.Param(jnp.asarray(table))
    self.not_id = ids["not"]
    self.reads_not = reads_not

  def encode_image(self, images):
    return images.mean(axis=(1, 2))

  def encode_text(self, tokens):
    z = self.table[...][tokens].sum(axis=1)
    if self.reads_not:
      z = jnp.where(jnp.any(tokens == self.not_id, axis=1, keepdims=True), -z, z)
    return z


# ----------------------------------------------------------------------------------------------
# The metric.
# ----------------------------------------------------------------------------------------------
def _brute_force_accuracy(images, labels, classes) -> float:
  correct = 0
  for x, label in zip(images, labels):
    scores = [float(np.dot(x, c)) for c in classes]
    correct += all(scores[label] > s for k, s in enumerate(scores) if k != label)
  return correct / len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zeroshot_scores_equal_brute_force_with_ties_as_failures(seed):
  rng = np.random.default_rng(seed)
  # Small integer vectors: many exact ties between classes.
  images = rng.integers(0, 2, (200, 4)).astype(np.float32)
  labels = rng.integers(0, 5, 200)
  original = rng.integers(0, 2, (5, 4)).astype(np.float32)
  negated = rng.integers(0, 2, (5, 4)).astype(np.float32)
  scores = zeroshot.zeroshot_scores(images, labels, original, negated)
  expected_original = _brute_force_accuracy(images, labels, original)
  expected_negated = _brute_force_accuracy(images, labels, negated)
  assert scores["original_accuracy"] == pytest.approx(expected_original)
  assert scores["negated_accuracy"] == pytest.approx(expected_negated)
  assert scores["delta"] == pytest.approx(expected_original - expected_negated)


def test_tie_is_a_failure_and_perfect_original():
  images = np.eye(3, dtype=np.float32)
  labels = np.array([0, 1, 2])
  # Negated classifier: class 0 ties with class 1 for image 0; image 1 and 2 won by class 0.
  negated = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  scores = zeroshot.zeroshot_scores(images, labels, np.eye(3, dtype=np.float32), negated)
  assert scores == {"original_accuracy": 1.0, "negated_accuracy": 0.0, "delta": 1.0}


def test_prompt_ensemble_averages_unit_vectors_then_renormalises(tokenizer):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(tokenizer.vocab_size, 8)).astype(np.float32)

  def encode_texts(tokens):  # any deterministic text tower, unit-normalised as the real one
    z = table[tokens].sum(axis=1)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)

  names, templates = ["cat", "sea lion", "red car"], ["a photo of a {c}", "{} in the wild"]
  # 6 prompts in batches of 4: the second batch is padded, and the padding dropped.
  got = zeroshot.class_embeddings(encode_texts, tokenizer, names, templates, batch_size=4)
  for row, name in zip(got, names):
    per_template = encode_texts(tokenizer([t.format(name, c=name) for t in templates]))
    mean = per_template.mean(axis=0)
    np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)


def test_clean_class_name():
  assert zeroshot.clean_class_name("aquarium_fish") == "aquarium fish"
  assert zeroshot.clean_class_name("american_pit_bull_terrier") == "american pit bull terrier"


# ----------------------------------------------------------------------------------------------
# TFDS data.
# ----------------------------------------------------------------------------------------------
def test_load_split_reads_array_record_without_tensorflow(toy_dir):
  source, names = zeroshot.load_split("zeroshot_toy_a", str(toy_dir))
  assert names == ["dark red", "dark green", "dark blue"]
  assert len(source) == 30
  record = source[0]
  assert record["image"].dtype == np.uint8 and record["image"].ndim == 3
  assert "tensorflow" not in sys.modules


def test_missing_data_names_data_dir_and_prepare_command(tmp_path, tiny_model):
  empty = tmp_path / "empty"
  evaluator = zeroshot.ZeroShotEvaluator(["cifar10"], data_dir=str(empty))
  with pytest.raises(FileNotFoundError) as error:
    list(evaluator.run(tiny_model))
  message = str(error.value)
  assert str(empty) in message
  assert f"tfds build cifar10 --file_format=array_record --data_dir={empty}" in message
  assert "download_and_prepare(file_format='array_record')" in message
  assert not (empty / "downloads").exists()  # checked before tfds could start a download
  with pytest.raises(FileNotFoundError, match="not_a_tfds_dataset.*not found under data_dir"):
    zeroshot.load_split("not_a_tfds_dataset", str(empty))


def test_image_embeddings_do_not_depend_on_batch_size(toy_dir, tiny_model):
  source, _ = zeroshot.load_split("zeroshot_toy_a", str(toy_dir))
  encode_images = EvalRound.of_model(tiny_model).encode_images
  size = tiny_model.config.vision.image_size
  z8, labels8 = zeroshot.embed_images(encode_images, source, size, batch_size=8)  # 30 = 3·8 + 6
  z32, labels32 = zeroshot.embed_images(encode_images, source, size, batch_size=32)
  assert z8.shape == (30, tiny_model.config.projection_dim)
  np.testing.assert_allclose(z8, z32, atol=1e-5)
  np.testing.assert_array_equal(labels8, labels32)
  np.testing.assert_array_equal(labels8, [source[i]["label"] for i in range(30)])
  np.testing.assert_allclose(np.linalg.norm(z8, axis=-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# End to end.
# ----------------------------------------------------------------------------------------------
def test_tiny_model_end_to_end_reports_every_metric(toy_dir, tiny_model):
  evaluator = zeroshot.ZeroShotEvaluator(["zeroshot_toy_a", "zeroshot_toy_b"],
                                         data_dir=str(toy_dir), batch_size=8)
  results = dict(evaluator.run(tiny_model))
  per_dataset = ("original_accuracy", "negated_accuracy", "delta", "items")
  assert list(results) == ([f"zeroshot_toy_a/{k}" for k in per_dataset]
                           + [f"zeroshot_toy_b/{k}" for k in per_dataset]
                           + ["mean/original_accuracy", "mean/negated_accuracy", "mean/delta"])
  assert results["zeroshot_toy_a/items"] == 30 and results["zeroshot_toy_b/items"] == 20
  for name in ("zeroshot_toy_a", "zeroshot_toy_b"):
    assert 0.0 <= results[f"{name}/original_accuracy"] <= 1.0
    assert 0.0 <= results[f"{name}/negated_accuracy"] <= 1.0
    assert results[f"{name}/delta"] == pytest.approx(
        results[f"{name}/original_accuracy"] - results[f"{name}/negated_accuracy"])
  for key in ("original_accuracy", "negated_accuracy", "delta"):
    assert results[f"mean/{key}"] == pytest.approx(
        (results[f"zeroshot_toy_a/{key}"] + results[f"zeroshot_toy_b/{key}"]) / 2)

  # The same numbers with the batches sharded over the 8-device mesh, and max_examples a prefix.
  sharded = dict(evaluator.run(tiny_model, mesh=make_mesh()))
  assert sharded == pytest.approx(results)
  short = zeroshot.ZeroShotEvaluator(["zeroshot_toy_a"], data_dir=str(toy_dir), batch_size=8,
                                     max_examples=10)
  assert dict(short.run(tiny_model))["zeroshot_toy_a/items"] == 10
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("reads_not, negated, delta", [(True, 0.0, 1.0), (False, 1.0, 0.0)])
def test_constructed_model_perfect_on_original_prompts(toy_dir, tokenizer, reads_not, negated,
                                                       delta):
  # A model reading "not" prefers, for a red image, every class whose negated prompt ("this is
  # not a photo of a dark green") is true over the false one: negated accuracy 0, Δ = 1. A
  # bag-of-words model ranks negated prompts as the originals: negated accuracy 1, Δ = 0.
  evaluator = zeroshot.ZeroShotEvaluator(["zeroshot_toy_a", "zeroshot_toy_b"],
                                         data_dir=str(toy_dir), batch_size=16,
                                         templates=["this is a photo of a {c}", "a {c} thing"],
                                         tokenizer=tokenizer)
  results = dict(evaluator.run(ColourModel(tokenizer, reads_not)))
  for name in ("zeroshot_toy_a", "zeroshot_toy_b", "mean"):
    assert results[f"{name}/original_accuracy"] == 1.0
    assert results[f"{name}/negated_accuracy"] == negated
    assert results[f"{name}/delta"] == delta


def test_class_names_override(toy_dir, tokenizer):
  model = ColourModel(tokenizer, reads_not=True)
  # Rotated names: each image's true label now carries another colour's prompt.
  evaluator = zeroshot.ZeroShotEvaluator(
      ["zeroshot_toy_a"], data_dir=str(toy_dir), tokenizer=tokenizer,
      class_names={"zeroshot_toy_a": ["green", "blue", "red"]})
  assert dict(evaluator.run(model))["zeroshot_toy_a/original_accuracy"] == 0.0
  wrong_length = zeroshot.ZeroShotEvaluator(["zeroshot_toy_a"], data_dir=str(toy_dir),
                                            class_names={"zeroshot_toy_a": ["red"]})
  with pytest.raises(ValueError, match="has 1 names; the dataset has 3 classes"):
    list(wrong_length.run(model))


def test_from_config():
  evaluator = zeroshot.ZeroShotEvaluator.from_config(
      {"type": "zeroshot", "datasets": ["cifar10"], "data_dir": "/data/tfds", "batch_size": 64,
       "negated_templates": ["not a {c}"], "max_examples": None})
  assert evaluator.datasets == ["cifar10"] and evaluator.data_dir == "/data/tfds"
  assert evaluator.batch_size == 64 and evaluator.max_examples is None
  assert evaluator.templates == list(zeroshot.TEMPLATES)
  assert evaluator.negated_templates == ["not a {c}"]
