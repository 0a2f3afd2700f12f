"""Random-access sources of caption triples: the paper's CSV layouts (and any CSV/JSONL) and ArrayRecord.

Every source yields dicts with `image` (encoded bytes, or uint8 HWC for generated data), `caption`,
`paraphrase`, `negation`, `id` and, where the source knows it, `image_key`: the identity of the
image, shared by every row showing it (triple files: the image's file name; ArrayRecord: the key
`encode_record` stored, else the pipeline uses `content_key` of the bytes). A record whose image
cannot be read carries `image=None` and an `error` saying why: the pipeline skips and counts it
(bad-input policy), nothing raises mid-epoch.

Image names in a triple file are untrusted (`read_image_file`): a name that resolves outside the
image folder (an absolute path, `..`, a symlink out; a gs:// key by normalisation) or that is not
a regular file (a FIFO, a device) is refused, a bad record like an unreadable image; training,
evaluation and prepare all read images through it. Triple files are UTF-8, with or without a
byte-order mark; text that is not, or a CSV field over the csv module's limit, is one error naming
the file and line (`read_rows`).

Paths: every file named by a user (triple files, image folders, shard folders) may be local or
`gs://` (`semclip_jax.storage`); ArrayRecord shards in a bucket are read from checked local copies
(`storage.cached_local_copy`), since ArrayRecord's reader opens local files only.

Splits (`select_split`): an explicit split column if given; else CC-Neg's official split
(`ccneg_official_split`: the last 40,000 items test, val carved from the rest by image); else
`split_by` "image" (default, `split_by_image`: all captions of one image land in one split) or
"rows" (`split_by_rows`: the official SemCLIP code's seeded random row split, which leaks images
between train, val and test).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

from semclip_jax import storage

logger = logging.getLogger(__name__)

FIELDS = ("caption", "paraphrase", "negation")
SPLITS = ("train", "val", "test")
SPLIT_BY = ("image", "rows")  # how `select_split` cuts a file without a split column
CCNEG_EVAL_ITEMS = 40_000  # CC-Neg's official evaluation split: its last 40,000 items
CCNEG_ROWS = 228_246  # rows of the CC-Neg release, in which the last 40,000 are CoN-CLIP's test set
# The SugarCrepe++ triples in the paper's CSV layout (4,757 rows, BSD-3, vendor/NOTICE.md): shipped so
# that tests and benchmarks use real captions on any fresh clone. The COCO images are not shipped.
SUGARCREPE_PP_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor",
                                 "sugarcrepe_pp_paraphrased.csv")

# The paper's two CSV layouts: our field -> their column. "image" is the column naming the file.
LAYOUTS: dict[str, dict[str, str]] = {
    "ccneg": {"image": "image_number", "caption": "caption", "paraphrase": "paraphrased",
              "negation": "negation"},
    "sugarcrepe_pp": {"image": "filename", "caption": "caption", "paraphrase": "paraphrased",
                      "negation": "negation"},
}


@dataclasses.dataclass(frozen=True)
class Triple:
  id: str
  image: str  # file name, relative to the image folder
  caption: Any
  paraphrase: Any
  negation: Any
  split: str | None = None  # from an explicit split column, when the file has one


def _ccneg_file(value: str) -> str:
  return f"{int(value):09d}.jpg"


def detect_layout(columns: Sequence[str]) -> str | None:
  for name, mapping in LAYOUTS.items():
    if set(mapping.values()) <= set(columns):
      return name
  return None


def read_rows(path: str) -> tuple[list[str], list[dict[str, Any]], int]:
  """(header, rows, number of the first data row) of a CSV (header row 1) or a JSONL file
  (local or gs://), UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8" has one). Text
  that is not UTF-8, a CSV row the csv module refuses (a field over csv.field_size_limit(), a NUL)
  or a JSONL line that is not an object is a ValueError naming the file and line."""
  # Decoded whole (the rows are all kept anyway): a decoding error's offset then gives its line.
  data = storage.read_bytes(storage.check(path)).removeprefix(codecs.BOM_UTF8)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}: line {line}: not UTF-8 text "
                     f"(byte {data[e.start]:#04x}: {e.reason}); save the file as UTF-8") from None
  lines = io.StringIO(text, newline="")  # as open(newline=""): the csv module reads \r\n itself
  rows = []
  if not path.endswith((".jsonl", ".json")):
    reader = csv.DictReader(lines)
    header = None
    try:
      header = list(reader.fieldnames or [])
      for row in reader:
        rows.append(row)
    except csv.Error as e:  # row numbers as read_triples gives them: the header is row 1
      number = 1 if header is None else len(rows) + 2
      # The inner reader's line count: DictReader's own is updated only after a row parses.
      raise ValueError(f"{path}: row {number} (line {reader.reader.line_num}): {e}") from None
    return header, rows, 2
  for line_number, line in enumerate(lines, 1):
    if line.strip():
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not a JSON object: {e}") from e
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_number}: not a JSON object: {type(row).__name__}")
      rows.append(row)
  return sorted(set().union(*(r.keys() for r in rows))) if rows else [], rows, 1


def read_triples(path: str, *, layout: str | None = None, columns: Mapping[str, str] | None = None,
                 split_column: str | None = None) -> list[Triple]:
  """Reads a CSV or JSONL of triples. `layout` ("ccneg", "sugarcrepe_pp") or `columns` (our field
  -> column, needing "image", "caption", "paraphrase", "negation", optionally "id"); by default
  the layout is detected from the header. A missing column fails here, naming column and file."""
  header, rows, first_row = read_rows(path)
  if columns is None:
    layout = layout or detect_layout(header)
    if layout is None:
      raise ValueError(f"{path}: columns {header} match no known layout {sorted(LAYOUTS)}; pass "
                       "a column mapping (image, caption, paraphrase, negation)")
    if layout not in LAYOUTS:
      raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    columns = LAYOUTS[layout]
  for field in ("image", *FIELDS):
    if field not in columns:
      raise ValueError(f"column mapping for {path} lacks the field {field!r}")
    if columns[field] not in header:
      raise ValueError(f"{path}: required column {columns[field]!r} (for {field}) is missing; "
                       f"columns are {header}")
  if split_column is not None and split_column not in header:
    raise ValueError(f"{path}: split column {split_column!r} is missing; columns are {header}")
  aliases = {"validation": "val", "valid": "val", "eval": "test"}
  to_file = _ccneg_file if layout == "ccneg" else str
  triples = []
  for row_number, row in enumerate(rows, first_row):
    try:
      image = to_file(row[columns["image"]])
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path}: row {row_number}: bad {columns['image']!r} value "
                       f"{row[columns['image']]!r}: {e}") from e
    ident = str(row[columns["id"]]) if "id" in columns else f"{storage.basename(path)}:{row_number}"
    label = None
    if split_column is not None:
      label = str(row.get(split_column, "")).strip().lower()
      label = aliases.get(label, label)
    triples.append(Triple(ident, image, *(row.get(columns[f]) for f in FIELDS), split=label))
  return triples


def _check_split(split: str, ratios: Sequence[float]) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
  if len(ratios) != 3 or min(ratios) < 0 or not np.isclose(sum(ratios), 1.0):
    raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")


def split_by_image(triples: Sequence[Triple], split: str, *, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                   seed: int = 0) -> list[Triple]:
  """The triples of `split` ("train", "val", "test"), whole images assigned to one split.

  Unique images are sorted, permuted with `seed`, and cut by `ratios`: deterministic, and no image
  appears in two splits. Triples keep their file order.
  """
  _check_split(split, ratios)
  images = sorted({t.image for t in triples})
  order = np.random.default_rng(seed).permutation(len(images))
  bounds = np.round(np.cumsum([0, *ratios]) * len(images)).astype(int)
  index = SPLITS.index(split)
  chosen = {images[i] for i in order[bounds[index]:bounds[index + 1]]}
  return [t for t in triples if t.image in chosen]


def split_by_rows(triples: Sequence[Triple], split: str, *,
                  ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[Triple]:
  """The triples of `split` as the official SemCLIP code cuts them (src/dataset.py): rows shuffled
  as pandas' `df.sample(frac=1.0, random_state=seed)` does (`RandomState(seed).permutation(n)`),
  then test_size = int(n·ratios[2]), val_size = int(n·ratios[1]); "train" the first
  n - test_size - val_size shuffled rows, "val" the next val_size, "test" the rest, each in the
  shuffled order (ratios[0] is implied). Rows, not images: the captions of one image can land in
  train and test, so test scores are inflated by images seen in training (use for comparison
  with the paper only).
  """
  _check_split(split, ratios)
  n = len(triples)
  order = np.random.RandomState(seed).permutation(n)  # pylint: disable=no-member
  val_size, test_size = int(n * ratios[1]), int(n * ratios[2])
  train_size = n - test_size - val_size
  start, stop = {"train": (0, train_size), "val": (train_size, train_size + val_size),
                 "test": (train_size + val_size, n)}[split]
  return [triples[i] for i in order[start:stop]]


def ccneg_official_split(triples: Sequence[Triple], split: str, *, val_fraction: float = 0.05,
                         seed: int = 0) -> list[Triple]:
  """CC-Neg's release split: the last 40,000 items are "test" (CoN-CLIP's evaluation set); from
  the rest, a `val_fraction` share of the images (seeded by `seed`, as `split_by_image`) is "val"
  and the remainder "train"."""
  if len(triples) <= CCNEG_EVAL_ITEMS:
    raise ValueError(f"CC-Neg's official split needs more than its {CCNEG_EVAL_ITEMS} evaluation "
                     f"items, got {len(triples)} in all; is this the CC-Neg release? Otherwise "
                     "set data.ccneg_official=False to split by image")
  if not 0 <= val_fraction < 1:
    raise ValueError(f"data.ccneg_val_fraction must be in [0, 1), got {val_fraction}")
  if len(triples) != CCNEG_ROWS:
    logger.warning("CC-Neg's official split on %d rows, not the release's %d: the last-40,000 "
                   "split equals CoN-CLIP's only for the full file in its original order",
                   len(triples), CCNEG_ROWS)
  if split == "test":
    return list(triples[-CCNEG_EVAL_ITEMS:])
  if split not in ("train", "val"):
    raise ValueError(f"CC-Neg's official split has 'train', 'val' and 'test', not {split!r}")
  return split_by_image(triples[:-CCNEG_EVAL_ITEMS], split,
                        ratios=(1 - val_fraction, val_fraction, 0.0), seed=seed)


def read_image_file(image_dir: str, name: str) -> bytes:
  """The bytes of the image file `name`, as a triple file names it (untrusted), in `image_dir`: it
  must resolve inside the folder (`storage.join_inside`: no absolute path, no `..` or symlink
  leading out) and be a regular file (`storage.read_regular_file`: never a FIFO, which blocks, or
  a device, which never ends). Raises storage.OutsideFolderError (a ValueError) or an OSError."""
  return storage.read_regular_file(storage.join_inside(image_dir, name))


class TripleFileSource:
  """grain random-access source over triples whose images are files in `image_dir` (a local
  folder or a gs:// prefix), read by `read_image_file`."""

  def __init__(self, triples: Sequence[Triple], image_dir: str):
    self.triples = list(triples)
    self.image_dir = image_dir

  def __len__(self) -> int:
    return len(self.triples)

  def metadata(self, index: int) -> dict[str, Any]:
    """Record `index` without its image (no file read): what a cached image embedding needs."""
    t = self.triples[index]
    return {"id": t.id, "image_key": t.image, "caption": t.caption, "paraphrase": t.paraphrase,
            "negation": t.negation}

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.metadata(index)
    name = self.triples[index].image
    try:
      return {**record, "image": read_image_file(self.image_dir, name)}
    except (OSError, ValueError) as e:  # a bad record: counted, and nothing outside is read
      reason = e.strerror if isinstance(e, OSError) and e.strerror else e
      return {**record, "image": None,
              "error": f"cannot read image {storage.join(self.image_dir, name)}: {reason}"}

  def __repr__(self) -> str:
    return f"TripleFileSource({len(self)} triples, image_dir={self.image_dir!r})"


def csv_source(path: str, image_dir: str, *, split: str | None = "train", layout: str | None = None,
               columns: Mapping[str, str] | None = None, split_column: str | None = None,
               ratios: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0,
               ccneg_official: bool = False, split_by: str = "image",
               ccneg_val_fraction: float = 0.05) -> TripleFileSource:
  """A CSV/JSONL of triples + an image folder, restricted to `split` (None: every row), chosen
  as `select_split` chooses."""
  triples = read_triples(path, layout=layout, columns=columns, split_column=split_column)
  return TripleFileSource(select_split(triples, split, ratios=ratios, seed=split_seed,
                                       ccneg_official=ccneg_official, split_column=split_column,
                                       split_by=split_by, ccneg_val_fraction=ccneg_val_fraction),
                          image_dir)


def select_split(triples: Sequence[Triple], split: str | None, *, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                 seed: int = 0, ccneg_official: bool = False, split_column: str | None = None,
                 split_by: str = "image", ccneg_val_fraction: float = 0.05) -> list[Triple]:
  """The triples of `split` (None: all): by the explicit split column if the triples were read
  with one, else CC-Neg's official split if asked (`ccneg_val_fraction` of its training images
  validate), else seeded by `seed` with `ratios`: `split_by` "image" (`split_by_image`, no image
  in two splits) or "rows" (`split_by_rows`, the official code's row split: leaks images)."""
  if split_by not in SPLIT_BY:
    raise ValueError(f"unknown split_by {split_by!r} (data.split_by); choose one of {SPLIT_BY}")
  if split is None:
    return list(triples)
  if split_column is not None:
    return [t for t in triples if t.split == split]
  if ccneg_official:
    return ccneg_official_split(triples, split, val_fraction=ccneg_val_fraction, seed=seed)
  cut = split_by_image if split_by == "image" else split_by_rows
  return cut(triples, split, ratios=ratios, seed=seed)


# ----------------------------------------------------------------------------------------------
# ArrayRecord shards written by `python -m semclip_jax.data.prepare`.
# ----------------------------------------------------------------------------------------------
def encode_record(id: str, image: bytes, caption: str, paraphrase: str,  # pylint: disable=redefined-builtin
                  negation: str, image_key: str | None = None) -> bytes:
  """One ArrayRecord record: a msgpack map of the id, the encoded image, the three captions and,
  when the source names its images (a file name, a sample key), that `image_key`."""
  record = {"id": id, "image": image, "caption": caption, "paraphrase": paraphrase,
            "negation": negation}
  if image_key is not None:
    record["image_key"] = image_key
  return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  return msgpack.unpackb(data, raw=False)


def content_key(image: bytes | np.ndarray) -> str:
  """The `image_key` of a record that names none: sha1 hex of its encoded bytes (of a pixel
  array's shape and bytes), so identical image files share it."""
  if isinstance(image, np.ndarray):
    data = repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()
  else:
    data = bytes(image)
  return hashlib.sha1(data).hexdigest()


def record_metadata(source, index: int) -> dict[str, Any]:
  """Record `index` of `source` without its image, with its `image_key` (the source's own, else
  the content hash): from `source.metadata` where a source can skip the image (no file read, no
  drawing), else the whole record read and the image dropped."""
  metadata = getattr(source, "metadata", None)
  if metadata is not None:
    return metadata(index)
  record = dict(source[index])
  image = record.pop("image", None)
  if record.get("image_key") is None and image is not None:
    record["image_key"] = content_key(image)
  return record


class ArrayRecordSource:
  """grain random-access source over ArrayRecord shards of encoded triples.

  `paths`: a folder (its `*.array_record` files, sorted), one shard, or a list of shards; local or
  gs://. Shards in a bucket are read from local copies under `cache_dir` (None or "": the
  default, `storage.default_cache_root()`), downloaded once and reused while unchanged. `paths`
  keeps the names given (what identifies the data); `local_paths` are the files read.
  """

  def __init__(self, paths: str | Sequence[str], cache_dir: str | None = None):
    import grain  # pylint: disable=import-outside-toplevel

    if isinstance(paths, str):
      storage.check(paths, "ArrayRecord shards")
      paths = storage.glob(paths, "*.array_record") if storage.isdir(paths) else [paths]
    if not paths:
      raise FileNotFoundError("no .array_record shards given (or none in the folder)")
    self.paths = list(paths)
    self.local_paths = storage.cached_local_copy(
        [storage.check(p, "ArrayRecord shard") for p in self.paths], cache_dir or None)
    self._records = grain.sources.ArrayRecordDataSource(self.local_paths)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode_record(self._records[index])

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"
