"""NegBench (Alhamoud et al., "Vision-Language Models Do Not Understand Negation", CVPR 2025;
github.com/m1k2zoo/negbench): multiple-choice questions with negated options, and retrieval with
negated queries, read from NegBench's own CSV files.

MCQ files (`negbench_mcq`; NegBench's `CsvMCQDataset`, written by
synthetic_datasets/evaluation/create_mcq.py): columns `image_path`, `caption_0` ... `caption_<K-1>`,
`correct_answer` (index of the true caption) and, optionally, `correct_answer_template` (the kind
of the true caption: "positive" = affirmation "features A and B", "negative" = "does not feature
N", "hybrid" = "features B, but not N"). The prediction is the option closest to the image
(cosine); a tie with the true option is a failure. NegBench's files do not say of what kind each
wrong option is: its evaluator (benchmarks/src/evaluation/mcq.py) knows it by position, because
create_mcq.py always writes the true caption first and the wrong ones in a fixed order ("features
N, but not B" = hybrid, "features N" = positive, "does not feature A" = negative); its synthetic
file uses another fixed order. `OPTION_TYPES` holds both; `option_types` chooses.

Retrieval files (`negbench_retrieval`; NegBench's `CsvImageCaptionDataset`): columns `filepath`
and `captions`, the latter a Python list literal of strings (NegBench `eval`s it; we only ever
`ast.literal_eval` it). Recall@k both ways by image identity (`metrics.image_retrieval`: rows
naming the same file show one image), for the file at `path` and, prefixed `negated/`, for the
negated-query file at `negated_path` (COCO_val_negated_retrieval_*.csv).

Images: the released files hold absolute paths from the authors' machines. Each row's path is
resolved against `image_root` (`resolve_image_paths`), and every file is checked to exist when the
evaluator is built, so a bad copy fails before training, not after. The CSV files, `image_root`
and the images may be local or `gs://` (see `storage`); a row naming a `gs://` image is used as
it is.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import logging
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from semclip_jax import storage
from semclip_jax.data import sources, transforms
from semclip_jax.data.input_pipeline import trim_to_bucket
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.evaluators import metrics
from semclip_jax.evaluators.embed import EvalRound, Evaluator, Metrics, embed_rows
from semclip_jax.evaluators.zeroshot import embed_images, strict_top1

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_path", "filepath")  # the first present names the image (MCQ, retrieval)
TEMPLATES = ("positive", "negative", "hybrid")  # NegBench's kinds, reported in this order
# The kind of each option position, where NegBench's evaluator assumes one ("" = never wrong):
# "negbench" is create_mcq.py's layout (COCO, VOC2007, MSR-VTT, CheXpert, HAM10000 MCQ files; the
# true caption is always option 0), "negbench_synthetic" the synthetic-image MCQ file's (mcq.py,
# `is_synthetic=True`).
OPTION_TYPES = {"negbench": ("", "hybrid", "positive", "negative"),
                "negbench_synthetic": ("positive", "hybrid", "hybrid", "negative")}
AUTO = "auto"  # "negbench" when a file has its shape (4 options, every answer option 0), else none
NEGATED = "negated/"  # prefix of the metrics of `negated_path`


# ----------------------------------------------------------------------------------------------
# Metrics (numpy, no IO) on L2-normalised embeddings; ties are failures (strict >).
# ----------------------------------------------------------------------------------------------
def mcq_scores(images: np.ndarray, options: np.ndarray) -> np.ndarray:
  """[N, D] images, [N, K, D] their options -> [N, K] cosines (in float64, rounded to float32:
  options with equal embeddings tie, see `metrics.cosines`)."""
  return np.einsum("nd,nkd->nk", np.asarray(images, np.float64),
                   np.asarray(options, np.float64)).astype(np.float32)


def chosen_wrong(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """[N, K] scores, [N] true options -> [N]: the best-scoring other option (first on ties).
  For a failed question this is the option the model preferred (or tied) over the true one."""
  others = scores.astype(np.float64, copy=True)
  others[np.arange(len(correct)), correct] = -np.inf
  return np.argmax(others, axis=1)


def _share(mask: np.ndarray) -> float | None:
  return float(np.mean(mask)) if len(mask) else None


def template_groups(templates: Sequence[str]) -> list[str]:
  """NegBench's three kinds, then any other kinds the file has, sorted."""
  return list(TEMPLATES) + sorted(set(templates) - set(TEMPLATES))


def mcq_metrics(scores: np.ndarray, correct: np.ndarray, templates: Sequence[str] | None = None,
                option_types: Sequence[str] | None = None) -> dict[str, float]:
  """NegBench's MCQ metrics, as fractions, from [N, K] scores and [N] true options:

  `accuracy`, `items`; if `templates` [N] gives the kind of each true answer, per kind t
  (`template_groups`) `items/<t>` and `accuracy/<t>`; among wrong answers, the share choosing each
  option i, `wrong_choice/option_<i>`; and if `option_types` [K] gives the kind of each option
  position, the share choosing each kind, `wrong_choice/<type>`, overall and per kind of
  question, `wrong_choice/<t>/<type>` (mcq.py's wrong_answer_percentages and
  wrong_answers_by_question_type, as fractions of wrong answers). A share of nothing (a kind
  without questions, no wrong answers) is left out, where NegBench writes NaN: results.json stays
  strict JSON and the report shows "–".
  """
  correct = np.asarray(correct, np.int64)
  right = strict_top1(scores, correct)  # [N]
  chosen = chosen_wrong(scores, correct)[~right]  # [W], W wrong answers
  shares: dict[str, float | None] = {"accuracy": _share(right), "items": float(len(right))}
  groups = template_groups(templates) if templates is not None else []
  template_of = np.asarray(templates if templates is not None else [""] * len(right),
                           dtype=object)  # [N]
  for t in groups:
    shares[f"items/{t}"] = float(np.sum(template_of == t))
    shares[f"accuracy/{t}"] = _share(right[template_of == t])
  for i in range(scores.shape[1]):
    shares[f"wrong_choice/option_{i}"] = _share(chosen == i)
  if option_types is not None:
    type_of = np.asarray(option_types, dtype=object)[chosen]  # [W]
    kinds = list(dict.fromkeys(k for k in option_types if k))  # two positions may share a kind
    for kind in kinds:
      shares[f"wrong_choice/{kind}"] = _share(type_of == kind)
    for t in groups:
      of_t = type_of[template_of[~right] == t]
      for kind in kinds:
        shares[f"wrong_choice/{t}/{kind}"] = _share(of_t == kind)
  return {name: value for name, value in shares.items() if value is not None}


def retrieval_metrics(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """`t2i_recall@k`, `i2t_recall@k`, `images`, `texts` from [M, D] distinct images, [N, D] texts
  and [N] each text's image index (`metrics.image_retrieval`)."""
  out = {}
  for direction, recalls in metrics.image_retrieval(images, texts, text_image, ks).items():
    out.update({f"{direction}_recall@{k}": value for k, value in recalls.items()})
  return {**out, "images": float(len(images)), "texts": float(len(texts))}


# ----------------------------------------------------------------------------------------------
# Reading the files.
# ----------------------------------------------------------------------------------------------
def _read(path: str, required: Sequence[str]) -> tuple[list[str], list[dict[str, Any]], int]:
  """(header, rows, file row number of the first data row; the header is row 1), failing on a
  missing file, an empty file, a file without rows and a missing column."""
  storage.check(path, "NegBench CSV")
  if not storage.isfile(path):
    raise FileNotFoundError(f"NegBench CSV {path!r} does not exist")
  header, rows, first = sources.read_rows(path)  # local or gs://
  if not header:
    raise ValueError(f"NegBench CSV {path} is empty (no header row)")
  for column in required:
    if column not in header:
      raise ValueError(f"{path}: required column {column!r} is missing; columns are {header}")
  if not rows:
    raise ValueError(f"NegBench CSV {path} has a header but no rows")
  return header, rows, first


def _image_column(path: str, header: Sequence[str]) -> str:
  column = next((c for c in IMAGE_COLUMNS if c in header), None)
  if column is None:
    raise ValueError(f"{path}: no image column (one of {list(IMAGE_COLUMNS)}); columns are "
                     f"{list(header)}")
  return column


def _text(path: str, row: int, field: str, value: Any) -> str:
  """A non-blank cell (DictReader gives None for a cell a short row lacks)."""
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{path}: row {row}: field {field!r} is empty")
  return value


def caption_columns(path: str, header: Sequence[str]) -> list[str]:
  """`caption_0` ... `caption_<K-1>` (K >= 2, no gaps), however many the header has."""
  numbers = sorted(int(c[len("caption_"):]) for c in header
                   if c.startswith("caption_") and c[len("caption_"):].isdigit())
  if len(numbers) < 2 or numbers != list(range(len(numbers))):
    raise ValueError(f"{path}: MCQ options must be columns caption_0 ... caption_<K-1>, K >= 2; "
                     f"found {[f'caption_{n}' for n in numbers]} in {list(header)}")
  return [f"caption_{n}" for n in numbers]


def parse_captions(path: str, row: int, value: Any, field: str = "captions") -> list[str]:
  """A retrieval row's captions: a Python list literal of strings, parsed by `ast.literal_eval`
  (never `eval`: the file is data)."""
  text = _text(path, row, field, value)
  try:
    captions = ast.literal_eval(text)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
    raise ValueError(f"{path}: row {row}: field {field!r} is not a Python list literal "
                     f"({type(e).__name__}: {e}): {text[:200]!r}") from e
  if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
    raise ValueError(f"{path}: row {row}: field {field!r} must be a list of strings, got "
                     f"{text[:200]!r}")
  if not all(c.strip() for c in captions):
    raise ValueError(f"{path}: row {row}: field {field!r} holds an empty caption")
  return captions


def _within(root: str, relative: str) -> str | None:
  """root/relative, normalised, or None when `..` would lead out of root. Lexical: a symlink
  inside root (e.g. root/val2017 -> the real folder) is followed, as the user set it up. A gs://
  root's keys are joined the same way, with '/'."""
  if storage.is_remote(root):
    try:
      return storage.join_inside(root, relative)
    except storage.OutsideFolderError:
      return None
  joined = os.path.normpath(os.path.join(root, relative))
  return joined if os.path.commonpath([root, joined]) == root else None


def resolve_image_paths(path: str, rows: Sequence[int], image_paths: Sequence[str],
                        image_root: str) -> list[str]:
  """Each row's image file: a relative path joined to `image_root`; an absolute path as it is
  when it exists, else (a path from NegBench's machines) with the directory prefix common to all
  the file's absolute paths that do not exist replaced by `image_root` (so sub-folders below that
  prefix are kept). Fails, naming the row, on a path that would leave `image_root`. `image_root`
  may be a gs:// folder; a gs:// image path is used as it is."""
  storage.check(image_root, "NegBench image_root")
  root = (image_root.rstrip("/") if storage.is_remote(image_root)
          else os.path.normpath(os.path.abspath(image_root)))
  foreign = [os.path.dirname(p) for p in image_paths if os.path.isabs(p) and not os.path.exists(p)]
  prefix = os.path.commonpath(foreign) if foreign else ""
  resolved = []
  for row, image in zip(rows, image_paths):
    if storage.is_remote(image):
      resolved.append(storage.check(image, f"{path}: row {row}: image"))
      continue
    if os.path.isabs(image):
      if os.path.exists(image):
        resolved.append(os.path.normpath(image))
        continue
      relative = os.path.relpath(image, prefix)
    else:
      relative = image
    inside = _within(root, relative)
    if inside is None:
      raise ValueError(f"{path}: row {row}: image path {image!r} leads out of image_root {root!r} "
                       f"(as {relative!r}); paths may not use '..' to leave it")
    resolved.append(inside)
  return resolved


def _existing_files(paths: Sequence[str]) -> set[str]:
  """The paths of `paths` that are files: local ones checked one by one, gs:// ones by listing
  each of their folders once (one request per folder, not per image)."""
  present = {p for p in set(paths) if not storage.is_remote(p) and os.path.isfile(p)}
  remote: dict[str, set[str]] = {}
  for p in paths:
    if storage.is_remote(p):
      remote.setdefault(storage.dirname(p), set()).add(p)
  for folder, wanted in remote.items():
    try:
      names = set(storage.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
      continue
    present |= {p for p in wanted if storage.basename(p) in names}
  return present


def check_images(path: str, rows: Sequence[int], originals: Sequence[str],
                 resolved: Sequence[str], image_root: str) -> None:
  """One error for all missing image files, naming the first (row, path in the file, path
  looked for) and how many are missing."""
  present = _existing_files(resolved)
  missing = [(row, original, found) for row, original, found in zip(rows, originals, resolved)
             if found not in present]
  if missing:
    row, original, found = missing[0]
    files = len({found for _, _, found in missing})
    raise FileNotFoundError(
        f"{path}: row {row}: image {original!r} not found (looked for {found}); {len(missing)} "
        f"of {len(rows)} rows ({files} distinct files) name missing images. Point image_root at "
        f"the folder holding them (now {image_root!r}): an absolute path that does not exist is "
        f"looked for there, less the folder prefix all such paths of the file share")


def _image_files(path: str, rows: Sequence[int], originals: Sequence[str],
                 image_root: str | None) -> list[str]:
  root = image_root or storage.dirname(storage.absolute(path))
  resolved = resolve_image_paths(path, rows, originals, root)
  check_images(path, rows, originals, resolved, root)
  return resolved


@dataclasses.dataclass(frozen=True)
class MCQItems:
  """One MCQ file: per question [N] its file row, image file, options ([K] each), true option
  and, when the file has `correct_answer_template`, the kind of its true answer."""
  path: str
  rows: list[int]
  images: list[str]
  options: list[list[str]]
  correct: np.ndarray
  templates: list[str] | None


def read_mcq(path: str, image_root: str | None = None) -> MCQItems:
  """Reads and checks an MCQ file; image files are resolved (`resolve_image_paths`) and must
  exist. `image_root` defaults to the CSV's folder."""
  header, records, first = _read(path, ("correct_answer",))
  image_column, options = _image_column(path, header), caption_columns(path, header)
  has_template = "correct_answer_template" in header
  rows, originals, captions, correct, templates = [], [], [], [], []
  for row, record in enumerate(records, first):
    rows.append(row)
    originals.append(_text(path, row, image_column, record.get(image_column)))
    captions.append([_text(path, row, c, record.get(c)) for c in options])
    value = _text(path, row, "correct_answer", record.get("correct_answer")).strip()
    try:
      answer = int(value)
    except ValueError:
      answer = -1
    if not 0 <= answer < len(options):
      raise ValueError(f"{path}: row {row}: field 'correct_answer' is {value!r}; it must be an "
                       f"option index 0..{len(options) - 1}")
    correct.append(answer)
    if has_template:
      template = _text(path, row, "correct_answer_template",
                       record.get("correct_answer_template")).strip()
      if "/" in template:
        raise ValueError(f"{path}: row {row}: field 'correct_answer_template' is {template!r}; "
                         "'/' would break the metric names")
      templates.append(template)
  images = _image_files(path, rows, originals, image_root)
  return MCQItems(path, rows, images, captions, np.asarray(correct, np.int64),
                  templates if has_template else None)


@dataclasses.dataclass(frozen=True)
class RetrievalItems:
  """One retrieval file: per row [N] its file row, image file and captions."""
  path: str
  rows: list[int]
  images: list[str]
  captions: list[list[str]]


def read_retrieval(path: str, image_root: str | None = None) -> RetrievalItems:
  """Reads and checks a retrieval file (`filepath`, `captions`); see `read_mcq` for images."""
  header, records, first = _read(path, ("captions",))
  image_column = _image_column(path, header)
  rows, originals, captions = [], [], []
  for row, record in enumerate(records, first):
    rows.append(row)
    originals.append(_text(path, row, image_column, record.get(image_column)))
    captions.append(parse_captions(path, row, record.get("captions")))
  if not any(captions):
    raise ValueError(f"{path}: every row's 'captions' list is empty: there is nothing to retrieve")
  return RetrievalItems(path, rows, _image_files(path, rows, originals, image_root), captions)


def resolve_option_types(option_types: str | Sequence[str] | None, items: MCQItems
                         ) -> tuple[str, ...] | None:
  """The kind of each option position, from an `OPTION_TYPES` name, a list of K kinds, AUTO, or
  None / "none" (no kinds: wrong choices by option index only). A position that is a wrong option
  of some question (not its true option) must have a kind."""
  k = len(items.options[0])
  if option_types is None or option_types == "none":
    return None
  if option_types == AUTO:
    if k != len(OPTION_TYPES["negbench"]) or np.any(items.correct != 0):
      logger.info("%s: not NegBench's create_mcq layout (4 options, answer 0): wrong choices "
                  "are reported by option index only; set option_types to name their kinds",
                  items.path)
      return None
    option_types = "negbench"
  if isinstance(option_types, str):
    if option_types not in OPTION_TYPES:
      raise ValueError(f"option_types {option_types!r}: choose one of {sorted(OPTION_TYPES)}, "
                       f"{AUTO!r}, 'none' or a list of {k} kinds")
    option_types = OPTION_TYPES[option_types]
  option_types = tuple(str(t) for t in option_types)
  if len(option_types) != k:
    raise ValueError(f"option_types {list(option_types)} has {len(option_types)} kinds; "
                     f"{items.path} has {k} options")
  for i, kind in enumerate(option_types):
    if not kind and np.any(items.correct != i):
      row = items.rows[int(np.argmax(items.correct != i))]
      raise ValueError(f"option_types {list(option_types)} gives option {i} no kind, but it is a "
                       f"wrong option in {items.path} (row {row} on)")
    if "/" in kind:
      raise ValueError(f"option_types kind {kind!r}: '/' would break the metric names")
  return option_types


# ----------------------------------------------------------------------------------------------
# Embedding, through a round's jitted towers.
# ----------------------------------------------------------------------------------------------
class _ImageFiles:
  """Random-access source of {"image": uint8 RGB HWC, "label": index} over image files, as
  `zeroshot.embed_images` reads (in threads). Regular files only (never a FIFO or a device), of
  at most `max_image_pixels` pixels by their header, checked before decoding."""

  def __init__(self, paths: Sequence[str],
               max_image_pixels: int | None = transforms.MAX_IMAGE_PIXELS):
    self.paths = list(paths)
    self.max_image_pixels = max_image_pixels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.paths[index]
    try:
      with transforms.open_image(storage.read_regular_file(path), self.max_image_pixels) as image:
        return {"image": np.asarray(image.convert("RGB")), "label": index}
    except Exception as e:  # PIL raises many types for broken files; name the file
      raise ValueError(f"cannot read NegBench image {path}: {type(e).__name__}: {e}") from e


def _check_batches(round_: EvalRound, batch_size: int) -> None:
  if round_.mesh is not None and batch_size % round_.mesh.size:
    raise ValueError(f"batch_size {batch_size} does not split over the {round_.mesh.size} devices")


def embed_image_files(round_: EvalRound, paths: Sequence[str],
                      data_config: ml_collections.ConfigDict) -> np.ndarray:
  """[M, D] unit embeddings of image files, with the data config's eval transform."""
  files = _ImageFiles(paths, data_config.get("max_image_pixels", transforms.MAX_IMAGE_PIXELS))
  z, _ = embed_images(round_.encode_images, files, data_config.image_size,
                      data_config.batch_size, mesh=round_.mesh, resize=data_config.resize,
                      normalization=data_config.normalization, desc="eval negbench images")
  return z


@functools.lru_cache(maxsize=2)
def _tokenizer(context_length: int) -> CLIPTokenizer:
  # Building the BPE tokenizer costs more than tokenizing a file: once per length, for all rounds.
  return CLIPTokenizer(context_length=context_length)


def embed_texts(round_: EvalRound, texts: Sequence[str], data_config: ml_collections.ConfigDict
                ) -> np.ndarray:
  """[N, D] unit embeddings of texts, tokens cut to the data config's smallest length bucket
  holding the longest (the text tower pools at EOS, so the cut padding changes nothing)."""
  tokenizer = _tokenizer(data_config.context_length)
  tokens = trim_to_bucket(tokenizer(list(texts)), tuple(data_config.get("length_buckets", ())),
                          tokenizer.pad_id)
  return embed_rows(round_.encode_texts, tokens, data_config.batch_size, round_.mesh)


def embed_distinct(embed, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """([M, D] embeddings of the distinct keys, in first-appearance order; [len(keys)] each key's
  row in it): each image file and caption text is embedded once, however often it repeats."""
  first, index = metrics.image_groups(keys)
  return embed([keys[i] for i in first]), index


# ----------------------------------------------------------------------------------------------
# The evaluators.
# ----------------------------------------------------------------------------------------------
def _options(eval_config: ml_collections.ConfigDict | dict, allowed: Sequence[str]
             ) -> dict[str, Any]:
  """`config.evals.<name>` as a dict, failing on a field the evaluator does not read (a typo,
  e.g. image_dir for image_root, would otherwise be ignored silently)."""
  c = (eval_config.to_dict() if isinstance(eval_config, ml_collections.ConfigDict)
       else dict(eval_config))
  known = {"type", "data", "every_steps", *allowed}  # every_steps: 0 only (test data), as others
  unknown = sorted(set(c) - known)
  if unknown:
    raise ValueError(f"{c.get('type')} evaluator: unknown config fields {unknown}; it reads "
                     f"{sorted(known)}")
  if not c.get("path"):
    raise ValueError(f"{c.get('type')} evaluator: config field 'path' (the NegBench CSV) is empty")
  return c


class NegBenchMCQEvaluator(Evaluator):
  """Yields `mcq_metrics`: `accuracy`, `accuracy/<template>`, `items`, `items/<template>`,
  `wrong_choice/option_<i>`, and with option kinds `wrong_choice/<type>` and
  `wrong_choice/<template>/<type>`. The file is read and its images checked when built."""

  def __init__(self, path: str, data_config: ml_collections.ConfigDict, *,
               image_root: str | None = None, option_types: str | Sequence[str] | None = AUTO):
    self.items = read_mcq(path, image_root)
    self.option_types = resolve_option_types(option_types, self.items)
    self.data_config = data_config

  def size(self) -> int:
    return len(self.items.rows)

  @classmethod
  def from_config(cls, eval_config: ml_collections.ConfigDict,
                  data_config: ml_collections.ConfigDict) -> NegBenchMCQEvaluator:
    """From `config.evals.<name>` = {type: "negbench_mcq", path, image_root, option_types};
    `data_config` is the run's data config with the evaluator's `data` overrides (batch_size,
    image_size, context_length, length_buckets, resize, normalization)."""
    c = _options(eval_config, ("path", "image_root", "option_types"))
    return cls(c["path"], data_config, image_root=c.get("image_root") or None,
               option_types=c.get("option_types", AUTO))

  def compute(self, round_: EvalRound) -> Metrics:
    _check_batches(round_, self.data_config.batch_size)
    items, n = self.items, len(self.items.rows)
    zi, image_of = embed_distinct(lambda p: embed_image_files(round_, p, self.data_config),
                                  items.images)
    texts = [c for options in items.options for c in options]
    zt, text_of = embed_distinct(lambda t: embed_texts(round_, t, self.data_config), texts)
    scores = mcq_scores(zi[image_of], zt[text_of.reshape(n, -1)])
    yield from mcq_metrics(scores, items.correct, items.templates, self.option_types).items()


class NegBenchRetrievalEvaluator(Evaluator):
  """Yields `retrieval_metrics` of the file at `path` (`t2i_recall@k`, `i2t_recall@k`, `images`,
  `texts`) and, if `negated_path` is given, the same of that file prefixed `negated/`. Each file
  is its own gallery; an image file both name is embedded once."""

  def __init__(self, path: str, data_config: ml_collections.ConfigDict, *,
               image_root: str | None = None, negated_path: str | None = None,
               ks: Sequence[int] = (1, 5, 10)):
    self.files = {"": read_retrieval(path, image_root)}
    if negated_path:
      self.files[NEGATED] = read_retrieval(negated_path, image_root)
    self.data_config = data_config
    self.ks = tuple(ks)

  def size(self) -> int:
    return min(len(items.rows) for items in self.files.values())  # each file is scored alone

  @classmethod
  def from_config(cls, eval_config: ml_collections.ConfigDict,
                  data_config: ml_collections.ConfigDict) -> NegBenchRetrievalEvaluator:
    """From `config.evals.<name>` = {type: "negbench_retrieval", path, image_root, negated_path,
    ks}."""
    c = _options(eval_config, ("path", "image_root", "negated_path", "ks"))
    options = {"ks": tuple(c["ks"])} if c.get("ks") else {}
    return cls(c["path"], data_config, image_root=c.get("image_root") or None,
               negated_path=c.get("negated_path") or None, **options)

  def compute(self, round_: EvalRound) -> Metrics:
    _check_batches(round_, self.data_config.batch_size)
    paths = [p for items in self.files.values() for p in items.images]
    zi, image_of = embed_distinct(lambda p: embed_image_files(round_, p, self.data_config), paths)
    start = 0
    for prefix, items in self.files.items():
      file_image = image_of[start:start + len(items.images)]  # [rows] index into zi
      start += len(items.images)
      gallery, row_image = metrics.image_groups(items.images)  # this file's distinct images
      texts = [c for captions in items.captions for c in captions]
      text_image = np.repeat(row_image, [len(c) for c in items.captions])
      zt, text_of = embed_distinct(lambda t: embed_texts(round_, t, self.data_config), texts)
      for key, value in retrieval_metrics(zi[file_image[gallery]], zt[text_of], text_image,
                                          self.ks).items():
        yield prefix + key, value
