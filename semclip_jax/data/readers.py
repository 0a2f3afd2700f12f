"""Readers of the triple release formats that `python -m semclip_jax.data.prepare` converts.

- `read_side_triples`: caption -> (paraphrase, negation) from the triple tool's CSV/JSONL;
- `ccneg_triples`: CoN-CLIP's CC-Neg `ccneg_preprocessed.pt` (paraphrases from a side file);
- `sugarcrepe_triples`: the official SugarCrepe++ per-subset JSON files (also read by the
  SugarCrepe++ evaluator);
- `webdataset_reader`: img2dataset-style webdataset tars, images included, as a
  `shard_writer.Reader`.

(The paper's CSV layouts are read by `sources.read_triples`.) Structural problems (a missing
column or field, an unreadable file) raise `shard_writer.PrepareError`; a record that is merely
bad carries a skip reason and is counted by the shard writer.

Inputs and image folders may be local or gs:// (`semclip_jax.storage`): tars are read through
seekable object files, the .pt by `torch_files.torch_load` (a gs:// one from a local copy).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tarfile
from typing import Any, Callable, Iterator, Mapping, Sequence

from semclip_jax import storage, torch_files
from semclip_jax.data import sources
from semclip_jax.data.shard_writer import Item, PrepareError, Reader

SUGARCREPE_SUBSETS = ("swap_obj", "swap_att", "replace_obj", "replace_att", "replace_rel")
SUGARCREPE_FIELDS = ("filename", "caption", "caption2", "negative_caption")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# CoN-CLIP's .pt stores absolute paths from its authors' machine; its own loader swaps this prefix
# for the local CC-Neg folder (src/data/finetuning_datasets.py), and so do we.
CCNEG_PATH_PREFIX = "/workspace/datasets/cc3m/"

# Skip reasons known from the text alone (the shard writer adds those of images and fields).
NO_TRIPLE = "no paraphrase/negation for caption"
NO_PARAPHRASE = "no paraphrase for caption"


def read_side_triples(path: str) -> dict[str, tuple[Any, Any]]:
  """caption -> (paraphrase, negation) from a CSV/JSONL with columns caption, paraphrase (or
  "paraphrased") and negation, as the triple generation tool writes. First occurrence wins."""
  header, rows, _ = sources.read_rows(path)
  paraphrase = "paraphrase" if "paraphrase" in header else "paraphrased"
  for column in ("caption", paraphrase, "negation"):
    if column not in header:
      raise PrepareError(f"{path}: required column {column!r} is missing; columns are {header}")
  table: dict[str, tuple[Any, Any]] = {}
  for row in rows:
    if isinstance(row.get("caption"), str):
      table.setdefault(row["caption"], (row.get(paraphrase), row.get("negation")))
  return table


def _dig(value: Any, *keys: str) -> Any:
  for key in keys:
    value = value.get(key) if isinstance(value, dict) else None
  return value


def _file_test(image_dir: str) -> Callable[[str], bool]:
  """Whether `image_dir`/relative exists: os.path.exists for a local folder; for a gs:// one, a
  listing per folder of names (one request per 1,000 names, not one per image)."""
  if not storage.is_remote(image_dir):
    return lambda relative: os.path.exists(os.path.join(image_dir, relative))

  @functools.cache
  def names(folder: str) -> frozenset[str]:
    try:
      return frozenset(storage.listdir(storage.join(image_dir, folder) if folder else image_dir))
    except (FileNotFoundError, NotADirectoryError):
      return frozenset()

  return lambda relative: os.path.basename(relative) in names(os.path.dirname(relative))


def _ccneg_image(path: str, exists: Callable[[str], bool]) -> str:
  """The image's path under the image folder (`exists` tests a path relative to it): below the
  CC-Neg root if it is there, else its name."""
  relative = path[len(CCNEG_PATH_PREFIX):] if path.startswith(CCNEG_PATH_PREFIX) else path
  if not os.path.isabs(relative) and exists(relative):
    return relative
  return os.path.basename(path)


def ccneg_triples(path: str, image_dir: str, side: Mapping[str, tuple[Any, Any]]
                  ) -> tuple[list[sources.Triple], dict[str, str]]:
  """(triples, id -> skip reason) of CoN-CLIP's `ccneg_preprocessed.pt`: a dict of parallel lists
  "image_paths" and "annotations", annotation["json"]["caption"] the caption and
  annotation["sop_data"]["negative-prompt"] the negation. Paraphrases come from `side`."""
  # weights_only: the release holds only lists, dicts and strings; never run pickled code.
  data = torch_files.torch_load(path, PrepareError)  # a gs:// file: from a local copy
  if not isinstance(data, dict) or not {"image_paths", "annotations"} <= set(data):
    found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
    raise PrepareError(f"{path}: expected a dict with 'image_paths' and 'annotations', got {found}")
  paths, annotations = data["image_paths"], data["annotations"]
  if len(paths) != len(annotations):
    raise PrepareError(f"{path}: {len(paths)} image_paths but {len(annotations)} annotations")
  triples, errors = [], {}
  exists = _file_test(image_dir)
  for i, (image, annotation) in enumerate(zip(paths, annotations)):
    caption = _dig(annotation, "json", "caption")
    negation = _dig(annotation, "sop_data", "negative-prompt")
    if isinstance(negation, str):  # CoN-CLIP's loaders drop the commas its generator left in
      negation = negation.replace(",", "")
    paraphrase = side.get(caption, (None,))[0] if isinstance(caption, str) else None
    if paraphrase is None:
      errors[f"ccneg:{i}"] = NO_PARAPHRASE
    triples.append(sources.Triple(f"ccneg:{i}", _ccneg_image(str(image), exists), caption,
                                  paraphrase, negation))
  return triples, errors


def sugarcrepe_files(inputs: Sequence[str]) -> list[str]:
  """The SugarCrepe++ subset files `inputs` name: a file as given, a folder its subset files."""
  files = []
  for path in inputs:
    found = [storage.join(path, f"{s}.json") for s in SUGARCREPE_SUBSETS]
    files += [p for p in found if storage.isfile(p)] if storage.isdir(path) else [path]
  return files


def sugarcrepe_triples(inputs: Sequence[str]) -> list[sources.Triple]:
  """Triples of SugarCrepe++ subset files (or folders holding them): caption, caption2 (the
  paraphrase), negative_caption, with ids `<file stem>:<record id>`. The release
  (github.com/Sri-Harsha/scpp, data/*.json) is a list of records with an "id"; SugarCrepe's own
  files map id -> record: both are read."""
  files = sugarcrepe_files(inputs)
  triples = []
  for path in files:
    subset = os.path.splitext(storage.basename(path))[0]
    try:
      with storage.open(path, encoding="utf-8") as f:
        data = json.load(f)
    except (OSError, ValueError) as e:
      raise PrepareError(f"{path}: unreadable JSON: {e}") from e
    if isinstance(data, list):
      entries = [(r.get("id", i) if isinstance(r, dict) else i, r) for i, r in enumerate(data)]
    elif isinstance(data, dict):
      entries = list(data.items())
    else:
      raise PrepareError(f"{path}: expected a list of records or an id -> record mapping")
    for key, record in entries:
      missing = [f for f in SUGARCREPE_FIELDS if not isinstance(record, dict) or f not in record]
      if missing:
        raise PrepareError(f"{path}: record {key!r} lacks the field(s) {missing}")
      triples.append(sources.Triple(f"{subset}:{key}", str(record["filename"]), record["caption"],
                                    record["caption2"], record["negative_caption"]))
  if not files:
    raise PrepareError(f"{list(inputs)} hold none of {[s + '.json' for s in SUGARCREPE_SUBSETS]}")
  return triples


def _tar_samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
  """(key, extension -> member) per sample; webdataset keeps a sample's files adjacent."""
  key, members = None, {}
  for info in tar:
    name = os.path.basename(info.name)
    if not info.isfile() or "." not in name:
      continue
    stem, extension = name.split(".", 1)
    sample = os.path.join(os.path.dirname(info.name), stem)
    if sample != key and members:
      yield key, members
      members = {}
    key, members[extension.lower()] = sample, info
  if members:
    yield key, members


def _webdataset_item(tar: tarfile.TarFile, key: str, members: dict, side: Mapping) -> Item:
  read = lambda ext: tar.extractfile(members[ext]).read() if ext in members else None
  try:
    meta = json.loads(read("json") or b"{}")
  except ValueError:
    meta = {}
  meta = meta if isinstance(meta, dict) else {}
  try:
    caption = read("txt").decode("utf-8") if "txt" in members else meta.get("caption")
  except UnicodeDecodeError:
    caption = None
  from_side = side.get(caption, (None, None)) if isinstance(caption, str) else (None, None)
  # The json's own paraphrase and negation win; the side file fills in what it lacks.
  paraphrase, negation = (meta[f] if meta.get(f) is not None else from_side[i]
                          for i, f in enumerate(("paraphrase", "negation")))
  image = next((read(e) for e in IMAGE_EXTENSIONS if e in members), None)
  return Item(key, caption, paraphrase, negation, image=image,
              error=NO_TRIPLE if paraphrase is None and negation is None else None)


@contextlib.contextmanager
def _open_tar(path: str) -> Iterator[tarfile.TarFile]:
  """A tar shard, local or a gs:// object (read through a seekable object file)."""
  if not storage.is_remote(path):
    with tarfile.open(path) as tar:
      yield tar
    return
  with storage.open(path, "rb") as f, tarfile.open(fileobj=f) as tar:
    yield tar


def webdataset_reader(tars: Sequence[str], side: Mapping[str, tuple[Any, Any]]) -> Reader:
  """The samples of webdataset `tars`, in order: caption from `.txt` (else the `.json`'s
  "caption"), paraphrase and negation from the `.json`, else from `side` (caption ->
  (paraphrase, negation)), the image bytes from `.jpg`/`.jpeg`/`.png`/`.webp`."""
  def read(wanted):
    index = 0
    for path in tars:
      try:
        with _open_tar(path) as tar:
          for key, members in _tar_samples(tar):
            yield _webdataset_item(tar, key, members, side) if wanted(index) else None
            index += 1
      except (tarfile.TarError, OSError) as e:
        raise PrepareError(f"{path}: unreadable tar shard: {e}") from e
  return read
