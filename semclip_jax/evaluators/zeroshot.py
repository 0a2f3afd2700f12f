"""Zero-shot classification with original vs negated prompts on TFDS image-classification sets.

Each class gets two classifiers: one from the original prompts ("this is a photo of a {c}") and
one from the negated prompts ("this is not a photo of a {c}"). Both are applied the same way, as
in the SemCLIP paper's `evaluate_zeroshot`: the predicted class is the argmax over classes of
cos(image, class embedding). A model that reads "not" should score LOW with the negated classifier
(the prompt for the true class is then the one statement that is false), so the gap
Δ = original − negated grows with negation understanding; a bag-of-words model scores about the
same with both. Accuracies are fractions in [0, 1] (the paper prints percentages), and a tie with
another class counts as a failure (torch's argmax would credit the lower class index).

Several templates make a prompt ensemble, as CLIP does: each class's text embeddings are
L2-normalised, averaged over templates, and normalised again.

Data are read with `tfds.data_source`, which needs the split prepared in `array_record` format but
no TensorFlow. Defaults are the test splits (Food-101 has none in TFDS: its `validation` split is
the official test set) of CIFAR-10, CIFAR-100, Flowers-102, Food-101 and Oxford-IIIT Pets.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from semclip_jax.data import transforms
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import EvalRound, Evaluator, Metrics, PaddedBatches, embed_rows
from semclip_jax.models.clip import l2_normalize
from semclip_jax.progress import Progress

DATASETS = ("cifar10", "cifar100", "oxford_flowers102", "food101", "oxford_iiit_pet")
TEMPLATES = ("this is a photo of a {c}",)
NEGATED_TEMPLATES = ("this is not a photo of a {c}",)
# TFDS split holding each dataset's official test set, where it is not called "test".
TEST_SPLITS = {"food101": "validation"}
LABEL_KEY = "label"
_READ_THREADS = 8  # decode + resize threads; PIL releases the GIL in both


# ----------------------------------------------------------------------------------------------
# Metric (numpy, no TFDS).
# ----------------------------------------------------------------------------------------------
def strict_top1(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[N, C] scores, [N] labels -> [N] bool: the true class scores strictly above every other."""
  rows = np.arange(len(labels))
  true = scores[rows, labels]
  others = scores.astype(np.float64, copy=True)
  others[rows, labels] = -np.inf
  return true > others.max(axis=1)


def zeroshot_scores(image_embeddings: np.ndarray, labels: np.ndarray,
                    class_embeddings_original: np.ndarray,
                    class_embeddings_negated: np.ndarray) -> dict[str, float]:
  """{original_accuracy, negated_accuracy, delta} from L2-normalised [N, D] images, [N] labels
  and [C, D] class embeddings; each accuracy is the share of images whose class wins argmax."""
  labels = np.asarray(labels, np.int64)
  images = np.asarray(image_embeddings, np.float64)  # cast once for both (metrics.cosines)
  original = float(np.mean(strict_top1(metrics.cosines(images, class_embeddings_original), labels)))
  negated = float(np.mean(strict_top1(metrics.cosines(images, class_embeddings_negated), labels)))
  return {"original_accuracy": original, "negated_accuracy": negated, "delta": original - negated}


# ----------------------------------------------------------------------------------------------
# Data: a prepared TFDS split and its class names.
# ----------------------------------------------------------------------------------------------
def clean_class_name(name: str) -> str:
  """TFDS label names -> prompt words: "aquarium_fish" -> "aquarium fish"."""
  return " ".join(name.replace("_", " ").split())


def _prepare_hint(name: str, data_dir: str) -> str:
  # Preparing needs what reading does not: TFDS encodes numpy images (CIFAR's) with TensorFlow,
  # and its download path imports importlib_resources.
  return (f"Prepare it once, with network, in an environment with "
          f"`pip install tensorflow importlib_resources`:\n"
          f"  tfds build {name} --file_format=array_record --data_dir={data_dir}\n"
          f"or in Python:\n"
          f"  tfds.builder({name!r}, data_dir={data_dir!r})"
          f".download_and_prepare(file_format='array_record')\n"
          f"Reading the prepared files needs no TensorFlow.")


def load_split(name: str, data_dir: str | None, split: str | None = None
               ) -> tuple[Sequence[dict[str, Any]], list[str]]:
  """(random-access source of {"image": uint8 HWC, "label": int}, cleaned class names).

  Raises FileNotFoundError naming the data_dir searched and the prepare command when the split is
  not prepared in array_record format; never downloads.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  split = split or TEST_SPLITS.get(name, "test")
  root = os.fspath(data_dir) if data_dir is not None else tfds.core.constants.DATA_DIR
  try:
    builder = tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError as e:
    # Neither a catalogue name nor a dataset folder under root; tfds's own message lists the
    # whole catalogue.
    raise FileNotFoundError(f"TFDS dataset {name!r} was not found under data_dir {root!r}. "
                            + _prepare_hint(name, root)) from e
  # Checked first because `tfds.data_source` would otherwise start a download.
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared under data_dir {root!r} "
                            f"(looked for {builder.data_dir}). " + _prepare_hint(name, root))
  formats = builder.info.available_file_formats()
  if not formats & tfds.core.FileFormat.with_random_access():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} under data_dir {root!r} is prepared as "
        f"{sorted(f.value for f in formats)}, but random access needs array_record. Convert it "
        f"(reading TFRecords needs TensorFlow):\n  tfds convert_format "
        f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record\n"
        + _prepare_hint(name, root))
  if split not in builder.info.splits:
    raise ValueError(f"{name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  names = builder.info.features[LABEL_KEY].names
  return builder.as_data_source(split=split), [clean_class_name(n) for n in names]


# ----------------------------------------------------------------------------------------------
# Embeddings in padded batches, through a round's jitted towers (`EvalRound.encode_*`).
# ----------------------------------------------------------------------------------------------
Encode = Callable[[Any], jax.Array]  # a batch [B, ...] -> [B, D] unit rows


def class_embeddings(encode_texts: Encode, tokenizer: CLIPTokenizer, class_names: Sequence[str],
                     templates: Sequence[str], batch_size: int, mesh=None) -> np.ndarray:
  """[C, D] prompt-ensemble class embeddings: mean over templates of unit vectors, renormalised."""
  # Templates may use "{c}" or "{}"; both are filled.
  prompts = [t.format(c, c=c) for c in class_names for t in templates]
  z = embed_rows(encode_texts, tokenizer(prompts), batch_size, mesh)
  z = z.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return np.asarray(l2_normalize(z))


class _EvalImage:
  """Record {"image": uint8 HWC array or PIL image, "label"} -> {"image": float32 [S, S, 3],
  "label"}, with the project's eval transform (`data.resize`, `data.normalization`)."""

  def __init__(self, image_size: int, resize: str = "shortest_side_crop",
               normalization: str = "clip"):
    self.image_size = image_size
    self.resize = resize
    self.normalization = normalization

  def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
    pixels = np.asarray(record["image"])
    if pixels.ndim == 3 and pixels.shape[-1] == 1:  # grayscale stored as HW1
      pixels = pixels[..., 0]
    pil = Image.fromarray(pixels.astype(np.uint8)).convert("RGB")
    pixels = transforms.eval_resize(pil, self.image_size, self.resize)
    return {"image": transforms.normalize(pixels, self.normalization),
            "label": np.int64(record[LABEL_KEY])}


def embed_images(encode_images: Encode, source, image_size: int, batch_size: int,
                 max_examples: int | None = None, mesh=None, *,
                 resize: str = "shortest_side_crop", normalization: str = "clip",
                 desc: str = "eval images") -> tuple[np.ndarray, np.ndarray]:
  """([N, D] unit image embeddings, [N] labels) of the first `max_examples` records, in order.
  `source[i]` is {"image": uint8 HWC array or PIL image, "label": int}; it is read (and decoded)
  in threads. Progress lines (first process only) are labelled `desc`."""
  n = len(source) if max_examples is None else min(max_examples, len(source))
  if n == 0:
    raise ValueError(f"{source!r} has no records to evaluate")
  batches = (grain.MapDataset.source(source)[:n]
             .map(_EvalImage(image_size, resize, normalization))
             .to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS,
                                                prefetch_buffer_size=2 * batch_size))
             .batch(batch_size))
  embeddings, labels = PaddedBatches(encode_images, batch_size, mesh), []
  with Progress(n, desc, unit="images", enabled=jax.process_index() == 0) as meter:
    for batch in batches:
      embeddings.add(batch["image"])
      labels.append(batch["label"])
      meter.update(len(batch["label"]))
    return embeddings.result(), np.concatenate(labels)  # read back before the last line


# ----------------------------------------------------------------------------------------------
# The evaluator.
# ----------------------------------------------------------------------------------------------
class ZeroShotEvaluator(Evaluator):
  """Yields `<dataset>/original_accuracy`, `/negated_accuracy`, `/delta`, `/items` per dataset,
  then `mean/original_accuracy`, `mean/negated_accuracy`, `mean/delta` over the datasets.

  `class_names` maps a dataset name to its class names (replacing the TFDS label names, in label
  order); `splits` maps a dataset name to a TFDS split (default: its test split). `max_examples`
  evaluates a prefix of each split (TFDS shuffles records when it writes them, so a prefix is a
  sample of all classes).
  """

  def __init__(self, datasets: Sequence[str] = DATASETS, *, data_dir: str | None,
               templates: Sequence[str] = TEMPLATES,
               negated_templates: Sequence[str] = NEGATED_TEMPLATES, batch_size: int = 256,
               max_examples: int | None = None, class_names: dict[str, Sequence[str]] | None = None,
               splits: dict[str, str] | None = None, tokenizer: CLIPTokenizer | None = None):
    if not datasets:
      raise ValueError("ZeroShotEvaluator needs at least one dataset")
    if not templates or not negated_templates:
      raise ValueError("templates and negated_templates must each hold at least one template")
    self.datasets = list(datasets)
    self.data_dir = data_dir
    self.templates = list(templates)
    self.negated_templates = list(negated_templates)
    self.batch_size = batch_size
    self.max_examples = max_examples
    self.class_names = dict(class_names or {})
    self.splits = dict(splits or {})
    self.tokenizer = tokenizer

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ZeroShotEvaluator":
    """From `config.evals.<name>` = {type: "zeroshot", datasets, data_dir, templates, ...}."""
    c = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    kwargs = {k: c[k] for k in ("templates", "negated_templates", "batch_size", "max_examples",
                                "class_names", "splits") if c.get(k) is not None}
    return cls(c.get("datasets", DATASETS), data_dir=c.get("data_dir"), **kwargs)

  def size(self) -> int | None:
    return self.max_examples  # else each dataset's test split: known once read, and large

  def _load(self, name: str) -> tuple[Sequence[dict[str, Any]], list[str]]:
    source, names = load_split(name, self.data_dir, self.splits.get(name))
    if name in self.class_names:
      override = list(self.class_names[name])
      if len(override) != len(names):
        raise ValueError(f"class_names[{name!r}] has {len(override)} names; the dataset has "
                         f"{len(names)} classes")
      names = override
    return source, names

  def compute(self, round_: EvalRound) -> Metrics:
    mesh = round_.mesh
    if mesh is not None and self.batch_size % mesh.size:
      raise ValueError(f"batch_size {self.batch_size} does not split over the {mesh.size} devices")
    # Every dataset is opened first, so a missing one fails before hours of embedding the others.
    loaded = {name: self._load(name) for name in self.datasets}
    tokenizer = self.tokenizer or CLIPTokenizer(
        context_length=round_.config.text.max_position_embeddings)
    results = []
    for name, (source, names) in loaded.items():
      zi, labels = embed_images(round_.encode_images, source, round_.config.vision.image_size,
                                self.batch_size, self.max_examples, mesh,
                                desc=f"eval {self.title()} {name}")
      zc = [class_embeddings(round_.encode_texts, tokenizer, names, templates, self.batch_size,
                             mesh)
            for templates in (self.templates, self.negated_templates)]
      scores = zeroshot_scores(zi, labels, *zc)
      results.append(scores)
      for key, value in scores.items():
        yield f"{name}/{key}", value
      yield f"{name}/items", float(len(labels))
    for key in ("original_accuracy", "negated_accuracy", "delta"):
      yield f"mean/{key}", float(np.mean([r[key] for r in results]))
