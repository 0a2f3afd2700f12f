"""Converts caption triples into ArrayRecord shards that `sources.ArrayRecordSource` reads.

Usage:
  python -m semclip_jax.data.prepare --format=csv --input=triples.csv --image_dir=images \
      --output_dir=shards [--layout=sugarcrepe_pp | --columns=image=file,caption=c,...] \
      [--split=train [--split_seed=0 --ratios=0.8,0.1,0.1 | --ccneg_official | --split_column=s]]
  python -m semclip_jax.data.prepare --format=webdataset --input cc3m/00000.tar cc3m/00001.tar \
      --triples=cc3m_triples.jsonl --output_dir=shards
  python -m semclip_jax.data.prepare --format=ccneg_pt --input=ccneg_preprocessed.pt \
      --image_dir=ccneg_dataset --triples=ccneg_paraphrases.csv --output_dir=shards
  python -m semclip_jax.data.prepare --format=sugarcrepe_json --input=sugarcrepe_pp_json/ \
      --image_dir=coco/val2017 --output_dir=shards

Input record i goes to shard `triples-{i // records_per_shard:05d}.array_record` as
`sources.encode_record(...)`, with the image file's bytes as they are. Bad records (image missing,
empty or undecodable; an empty or non-string caption field) are skipped and counted by reason in
`summary.json`; structural errors (missing column or field, unreadable input) exit with code 2.

A shard is written under a temporary name, renamed when complete and then recorded in
`progress.json`: rerunning the same command redoes only incomplete shards, so an interrupted run
resumes without duplicates or losses, and a finished one only prints its summary.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import io
import itertools
import json
import os
import sys
import tarfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from semclip_jax.data import sources

FORMATS = ("csv", "webdataset", "ccneg_pt", "sugarcrepe_json")
SUGARCREPE_SUBSETS = ("swap_obj", "swap_att", "replace_obj", "replace_att", "replace_rel")
SUGARCREPE_FIELDS = ("filename", "caption", "caption2", "negative_caption")
SHARD_NAME = "triples-{:05d}.array_record"
PROGRESS, SUMMARY = "progress.json", "summary.json"
MAX_EXAMPLES = 20  # example ids kept per skip reason
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# CoN-CLIP's .pt stores absolute paths from its authors' machine; its own loader swaps this prefix
# for the local CC-Neg folder (src/data/finetuning_datasets.py), and so do we.
CCNEG_PATH_PREFIX = "/workspace/datasets/cc3m/"

# Skip reasons: a fixed vocabulary, so that counts add up across shards and runs.
NO_IMAGE = "missing or unreadable image file"
EMPTY_IMAGE = "zero-size image file"
UNDECODABLE = "image does not decode"
NO_TRIPLE = "no paraphrase/negation for caption"
NO_PARAPHRASE = "no paraphrase for caption"


class PrepareError(ValueError):
  """A structural problem (missing column, unreadable input, mixed settings): exit code 2."""


@dataclasses.dataclass
class Item:
  """One input record. `image`: encoded bytes or decoded uint8 HWC pixels, else `image_path` is
  read; `error`: a skip reason known without the image."""
  id: str
  caption: Any
  paraphrase: Any
  negation: Any
  image: bytes | np.ndarray | None = None
  image_path: str | None = None
  error: str | None = None


# One Item per input record, in a fixed order; None allowed where `wanted(index)` is False, so that
# a resumed run need not read the images of completed shards.
Reader = Callable[[Callable[[int], bool]], Iterable["Item | None"]]


# ----------------------------------------------------------------------------------------------
# Input formats.
# ----------------------------------------------------------------------------------------------
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


def _torch_load(path: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise PrepareError(f"{path}: reading a CC-Neg .pt file needs PyTorch (pip install torch)"
                       ) from e
  try:  # weights_only: the release holds only lists, dicts and strings; never run pickled code
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise PrepareError(f"{path}: cannot be read by torch.load(weights_only=True): {e}") from e


def _dig(value: Any, *keys: str) -> Any:
  for key in keys:
    value = value.get(key) if isinstance(value, dict) else None
  return value


def _ccneg_image(path: str, image_dir: str) -> str:
  """The image's path under `image_dir`: below the CC-Neg root if it is there, else its name."""
  relative = path[len(CCNEG_PATH_PREFIX):] if path.startswith(CCNEG_PATH_PREFIX) else path
  if not os.path.isabs(relative) and os.path.exists(os.path.join(image_dir, relative)):
    return relative
  return os.path.basename(path)


def ccneg_triples(path: str, image_dir: str, side: Mapping[str, tuple[Any, Any]]
                  ) -> tuple[list[sources.Triple], dict[str, str]]:
  """(triples, id -> skip reason) of CoN-CLIP's `ccneg_preprocessed.pt`: a dict of parallel lists
  "image_paths" and "annotations", annotation["json"]["caption"] the caption and
  annotation["sop_data"]["negative-prompt"] the negation. Paraphrases come from `side`."""
  data = _torch_load(path)
  if not isinstance(data, dict) or not {"image_paths", "annotations"} <= set(data):
    found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
    raise PrepareError(f"{path}: expected a dict with 'image_paths' and 'annotations', got {found}")
  paths, annotations = data["image_paths"], data["annotations"]
  if len(paths) != len(annotations):
    raise PrepareError(f"{path}: {len(paths)} image_paths but {len(annotations)} annotations")
  triples, errors = [], {}
  for i, (image, annotation) in enumerate(zip(paths, annotations)):
    caption = _dig(annotation, "json", "caption")
    negation = _dig(annotation, "sop_data", "negative-prompt")
    if isinstance(negation, str):  # CoN-CLIP's loaders drop the commas its generator left in
      negation = negation.replace(",", "")
    paraphrase = side.get(caption, (None,))[0] if isinstance(caption, str) else None
    if paraphrase is None:
      errors[f"ccneg:{i}"] = NO_PARAPHRASE
    triples.append(sources.Triple(f"ccneg:{i}", _ccneg_image(str(image), image_dir), caption,
                                  paraphrase, negation))
  return triples, errors


def sugarcrepe_triples(inputs: Sequence[str]) -> list[sources.Triple]:
  """Triples of SugarCrepe++ subset files (or folders holding them): caption, caption2 (the
  paraphrase), negative_caption. The release (github.com/Sri-Harsha/scpp, data/*.json) is a list
  of records with an "id"; SugarCrepe's own files map id -> record: both are read."""
  files = []
  for path in inputs:
    found = [os.path.join(path, f"{s}.json") for s in SUGARCREPE_SUBSETS]
    files += [p for p in found if os.path.isfile(p)] if os.path.isdir(path) else [path]
  triples = []
  for path in files:
    subset = os.path.splitext(os.path.basename(path))[0]
    try:
      with open(path, encoding="utf-8") as f:
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


def _webdataset_reader(tars: Sequence[str], side: Mapping[str, tuple[Any, Any]]) -> Reader:
  def read(wanted):
    index = 0
    for path in tars:
      try:
        with tarfile.open(path) as tar:
          for key, members in _tar_samples(tar):
            yield _webdataset_item(tar, key, members, side) if wanted(index) else None
            index += 1
      except (tarfile.TarError, OSError) as e:
        raise PrepareError(f"{path}: unreadable tar shard: {e}") from e
  return read


# ----------------------------------------------------------------------------------------------
# Checking and encoding one record (in worker threads).
# ----------------------------------------------------------------------------------------------
def _image_bytes(item: Item) -> tuple[bytes | None, str | None]:
  if isinstance(item.image, np.ndarray):  # decoded pixels only: encode once, at high quality
    out = io.BytesIO()
    Image.fromarray(item.image).convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue(), None
  data = item.image
  if data is None:
    try:
      with open(item.image_path or "", "rb") as f:
        data = f.read()
    except OSError:
      return None, NO_IMAGE
  if not data:
    return None, EMPTY_IMAGE
  try:  # load() decodes every pixel: truncated files fail here, not at training time
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception:  # pylint: disable=broad-except  (PIL raises many types for bad files)
    return None, UNDECODABLE
  return data, None


def _encode(item: Item) -> tuple[bytes | None, str | None]:
  """(record, None) or (None, skip reason)."""
  is_text = lambda value: isinstance(value, str) and bool(value.strip())
  if not is_text(item.caption):
    return None, "empty or non-string caption"
  if item.error is not None:
    return None, item.error
  for field in ("paraphrase", "negation"):
    if not is_text(getattr(item, field)):
      return None, f"empty or non-string {field}"
  image, reason = _image_bytes(item)
  if reason is not None:
    return None, reason
  return sources.encode_record(item.id, image, item.caption, item.paraphrase, item.negation), None


def _ordered_map(pool: concurrent.futures.Executor, items: Iterable[Item], window: int
                 ) -> Iterator[tuple[Item, tuple[bytes | None, str | None]]]:
  """(item, _encode(item)) in input order, with at most `window` items (images) in flight."""
  pending: collections.deque = collections.deque()
  for item in items:
    pending.append((item, pool.submit(_encode, item)))
    if len(pending) > window:
      item, future = pending.popleft()
      yield item, future.result()
  for item, future in pending:
    yield item, future.result()


# ----------------------------------------------------------------------------------------------
# Shards, progress and summary.
# ----------------------------------------------------------------------------------------------
def _sync_and_rename(tmp: str, path: str) -> None:
  """Atomic even across a power cut: the old file or the new one, whole (data synced first)."""
  fd = os.open(tmp, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
  os.replace(tmp, path)


def _write_json(path: str, value: Any) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1)
  _sync_and_rename(path + ".tmp", path)


def _load_progress(output_dir: str, settings: dict) -> dict:
  path = os.path.join(output_dir, PROGRESS)
  if not os.path.exists(path):
    if glob.glob(os.path.join(output_dir, "triples-*.array_record")):
      raise PrepareError(f"{output_dir} holds shards but no {PROGRESS}: use an empty folder")
    return {"settings": settings, "shards": {}, "complete": False}
  with open(path, encoding="utf-8") as f:
    progress = json.load(f)
  if progress["settings"] != settings:
    old = progress["settings"]
    changed = sorted(k for k in settings.keys() | old.keys() if settings.get(k) != old.get(k))
    raise PrepareError(f"{output_dir} holds a run with other settings (differing: {changed}); "
                       "use another output folder")
  for key in list(progress["shards"]):  # a completed shard deleted since is redone
    if not os.path.exists(os.path.join(output_dir, SHARD_NAME.format(int(key)))):
      del progress["shards"][key]
      progress["complete"] = False
  return progress


def _merge(total: dict, counts: Mapping[str, Any]) -> None:
  """Adds `counts` ({"read", "written", "skipped": {reason: {"count", "examples"}}}) to `total`."""
  total["read"] += counts["read"]
  total["written"] += counts["written"]
  for reason, entry in counts["skipped"].items():
    merged = total["skipped"].setdefault(reason, {"count": 0, "examples": []})
    merged["count"] += entry["count"]
    merged["examples"] = (merged["examples"] + entry["examples"])[:MAX_EXAMPLES]


def _new_counts() -> dict:
  return {"read": 0, "written": 0, "skipped": {}}


def _summarize(progress: dict, output_dir: str, log: Callable[[str], Any]) -> dict:
  summary = _new_counts()
  for key in sorted(progress["shards"]):
    _merge(summary, progress["shards"][key])
  summary.update(shards=len(progress["shards"]), settings=progress["settings"])
  _write_json(os.path.join(output_dir, SUMMARY), summary)
  log(f"{summary['written']} of {summary['read']} records written to {summary['shards']} shards "
      f"in {output_dir}; {summary['read'] - summary['written']} skipped")
  for reason, entry in sorted(summary["skipped"].items(), key=lambda kv: -kv[1]["count"]):
    log(f"  {entry['count']:>8}  {reason} (e.g. {', '.join(entry['examples'][:3])})")
  return summary


def write_shards(reader: Reader, output_dir: str, settings: Mapping[str, Any], *,
                 records_per_shard: int = 10_000, num_workers: int | None = None,
                 writer_options: str = "group_size:1", log: Callable[[str], Any] = print) -> dict:
  """Writes the records of `reader` as resumable ArrayRecord shards; returns the summary.

  `settings` identify the run: a folder holding progress of other settings is refused.
  """
  # pylint: disable-next=import-outside-toplevel
  from array_record.python.array_record_module import ArrayRecordWriter

  if records_per_shard < 1:
    raise PrepareError(f"records_per_shard must be positive, got {records_per_shard}")
  os.makedirs(output_dir, exist_ok=True)
  settings = json.loads(json.dumps({**settings, "records_per_shard": records_per_shard}))
  progress = _load_progress(output_dir, settings)
  if progress["complete"]:
    return _summarize(progress, output_dir, log)
  for stray in glob.glob(os.path.join(output_dir, "triples-*.array_record.tmp")):
    os.remove(stray)  # what an interrupted run left half-written
  done = set(progress["shards"])
  wanted = lambda index: f"{index // records_per_shard:05d}" not in done
  workers = num_workers or min(8, os.cpu_count() or 1)
  by_shard = itertools.groupby(enumerate(reader(wanted)), lambda pair: pair[0] // records_per_shard)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for shard, group in by_shard:
      if not wanted(shard * records_per_shard):
        continue  # groupby skips the rest of the group
      path = os.path.join(output_dir, SHARD_NAME.format(shard))
      writer, counts = ArrayRecordWriter(path + ".tmp", writer_options), _new_counts()
      for item, (record, reason) in _ordered_map(pool, (i for _, i in group), 4 * workers):
        if record is not None:
          writer.write(record)
        _merge(counts, {"read": 1, "written": int(record is not None), "skipped": {
            reason: {"count": 1, "examples": [item.id]}} if reason else {}})
      writer.close()
      _sync_and_rename(path + ".tmp", path)  # only a complete shard carries the final name
      progress["shards"][f"{shard:05d}"] = counts
      _write_json(os.path.join(output_dir, PROGRESS), progress)
      log(f"shard {shard:05d}: {counts['written']} of {counts['read']} records written")
  progress["complete"] = True
  _write_json(os.path.join(output_dir, PROGRESS), progress)
  return _summarize(progress, output_dir, log)


# ----------------------------------------------------------------------------------------------
# Library entry and command line.
# ----------------------------------------------------------------------------------------------
def _check_options(fmt: str, inputs: Sequence[str], image_dir: str | None, triples: str | None,
                   csv_only: Sequence[Any], split: str | None) -> list[str]:
  """The input paths, made absolute, after checks that need no reading."""
  if fmt not in FORMATS:
    raise PrepareError(f"unknown format {fmt!r}; choose one of {FORMATS}")
  if fmt != "webdataset" and image_dir is None:
    raise PrepareError(f"--format={fmt} needs --image_dir")
  if fmt == "ccneg_pt" and triples is None:
    raise PrepareError("--format=ccneg_pt needs --triples: CC-Neg has no paraphrases")
  if fmt != "csv" and any(csv_only):
    raise PrepareError("--layout, --columns and --split_column apply to --format=csv only")
  if fmt == "webdataset" and split is not None:
    raise PrepareError("--split does not apply to --format=webdataset; split the tars instead")
  for path in [*inputs, *([triples] if triples else [])]:
    if not os.path.exists(path):
      raise PrepareError(f"input not found: {path}")
  if fmt in ("csv", "ccneg_pt") and len(inputs) != 1:
    raise PrepareError(f"--format={fmt} takes exactly one --input, got {len(inputs)}")
  if fmt == "webdataset":  # a folder stands for its tars
    inputs = [t for p in inputs for t in (sorted(glob.glob(os.path.join(p, "*.tar")))
                                          if os.path.isdir(p) else [p])]
    if not inputs:
      raise PrepareError("no .tar shards in the --input folder(s)")
  return [os.path.abspath(p) for p in inputs]


def prepare(fmt: str, inputs: Sequence[str], output_dir: str, *, image_dir: str | None = None,
            triples: str | None = None, layout: str | None = None,
            columns: Mapping[str, str] | None = None, split: str | None = None,
            split_seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1),
            ccneg_official: bool = False, split_column: str | None = None,
            records_per_shard: int = 10_000, num_workers: int | None = None,
            log: Callable[[str], Any] = print) -> dict:
  """Converts one input (see the module docstring) into shards in `output_dir`; returns the
  summary. Structural errors raise PrepareError (a ValueError)."""
  paths = _check_options(fmt, inputs, image_dir, triples, (layout, columns, split_column), split)
  image_dir = image_dir and os.path.abspath(image_dir)
  triples = triples and os.path.abspath(triples)
  settings = {"format": fmt, "inputs": paths, "image_dir": image_dir, "triples": triples,
              "layout": layout, "columns": dict(columns or {}), "split": split,
              "split_seed": split_seed if split else None,
              "ratios": list(ratios) if split else None,
              "ccneg_official": ccneg_official, "split_column": split_column}
  choose = dict(ratios=ratios, seed=split_seed, ccneg_official=ccneg_official,
                split_column=split_column)

  def reader(wanted):  # runs only when shards are missing: a finished run reads no input
    side = read_side_triples(triples) if triples is not None else {}
    if fmt == "webdataset":
      return _webdataset_reader(paths, side)(wanted)
    errors = {}
    if fmt == "csv":
      rows = sources.read_triples(paths[0], layout=layout, columns=columns,
                                  split_column=split_column)
    elif fmt == "ccneg_pt":
      rows, errors = ccneg_triples(paths[0], image_dir, side)
    else:
      rows = sugarcrepe_triples(paths)
    return (Item(t.id, t.caption, t.paraphrase, t.negation, error=errors.get(t.id),
                 image_path=os.path.join(image_dir, t.image))  # the workers read the images
            for t in sources.select_split(rows, split, **choose))

  return write_shards(reader, output_dir, settings, records_per_shard=records_per_shard,
                      num_workers=num_workers, log=log)


def _columns(text: str) -> dict[str, str]:
  return dict(pair.split("=", 1) for pair in text.split(","))  # ValueError: argparse reports it


def _ratios(text: str) -> tuple[float, ...]:
  return tuple(float(r) for r in text.split(","))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.data.prepare",
                                   description=__doc__.split("\n", 1)[0])
  add = parser.add_argument
  add("--format", required=True, choices=FORMATS)
  add("--input", required=True, nargs="+",
      help="input file(s); a folder stands for its webdataset tars or SugarCrepe++ subset files")
  add("--output_dir", required=True, help="gets the shards, progress.json and summary.json")
  add("--image_dir", help="image folder (ccneg_pt: the CC-Neg folder or its image folder)")
  add("--triples", help="webdataset, ccneg_pt: CSV/JSONL of caption, paraphrase, negation")
  add("--layout", choices=sorted(sources.LAYOUTS), help="csv: the paper's layout (default: detect)")
  add("--columns", type=_columns, help="csv: field=column,... (image, caption, paraphrase, "
      "negation, optionally id)")
  add("--split", choices=sources.SPLITS, help="write only this split, by image (default: all)")
  add("--split_seed", type=int, default=0)
  add("--ratios", type=_ratios, default=(0.8, 0.1, 0.1), help="train,val,test shares of images")
  add("--ccneg_official", action="store_true", help="CC-Neg's split: the last 40,000 are 'test'")
  add("--split_column", help="csv: a column naming each row's split")
  add("--records_per_shard", type=int, default=10_000, help="input records per shard")
  add("--num_workers", type=int, help="image-checking threads (default: min(8, CPUs))")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    prepare(args.format, args.input, args.output_dir, image_dir=args.image_dir,
            triples=args.triples, layout=args.layout, columns=args.columns, split=args.split,
            split_seed=args.split_seed, ratios=args.ratios, ccneg_official=args.ccneg_official,
            split_column=args.split_column, records_per_shard=args.records_per_shard,
            num_workers=args.num_workers)
  except (ValueError, OSError) as e:  # structural: missing column or field, unreadable input
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
