r"""Converts caption triples into ArrayRecord shards that `sources.ArrayRecordSource` reads.

Usage:
  python -m semclip_jax.data.prepare --format=csv --input=triples.csv --image_dir=images \
      --output_dir=shards --split=all \
      [--layout=sugarcrepe_pp | --columns=image=file,caption=c,...] \
      [--split_seed=0 --ratios=0.8,0.1,0.1 [--split_by=rows] | --ccneg_official \
      [--ccneg_val_fraction=0.05] | --split_column=s]
  python -m semclip_jax.data.prepare --format=ccneg_pt --input=ccneg_preprocessed.pt \
      --image_dir=ccneg_dataset --triples=ccneg_paraphrases.csv --output_dir=shards \
      --split=all --ccneg_official
  python -m semclip_jax.data.prepare --format=sugarcrepe_json --input=sugarcrepe_pp_json/ \
      --image_dir=coco/val2017 --output_dir=shards
  python -m semclip_jax.data.prepare --format=webdataset --input cc3m/00000.tar cc3m/00001.tar \
      --triples=cc3m_triples.jsonl --output_dir=shards

`--split=all` writes each split into its own folder, `<output_dir>/train`, `/val` and `/test`,
which training reads with
  --config.data.kind=array_record --config.data.path=<output_dir>/train \
  --config.data.eval_path=<output_dir>/val --config.data.test_path=<output_dir>/test
(`data.make_source` takes the training split from `data.path`, the validation split from
`data.eval_path` and the test split from `data.test_path`). `--split=train|val|test` writes that
split alone into `<output_dir>`. Splits are chosen as `sources.select_split` chooses them (and as
`data.make_source` does for the same options, so shards of a split hold the rows the CSV source of
that split reads). Without `--split` every row goes into `<output_dir>`: a whole evaluation set
(an evaluator with its own `split="all"` reads it from its `data.eval_path`), or webdataset tars,
which are split by the tars given. The last line printed names the flags to use.

Input record i goes to shard `triples-{i // records_per_shard:05d}.array_record` as
`sources.encode_record(...)`, with the image file's bytes as they are. Bad records (image missing,
empty or undecodable; an empty or non-string caption field) are skipped and counted by reason in
`summary.json`; structural errors (missing column or field, unreadable input) exit with code 2.
Progress (records done, written, skipped, rate, ETA) goes to stderr.

Image names in the input are untrusted (`sources.read_image_file`): one that resolves outside
`--image_dir` (absolute, `..`, a symlink out) or that is not a regular file (a FIFO, a device) is
skipped and counted, as is an image whose header declares more than `--max_image_pixels`.

A shard is written under a temporary name, renamed when complete and then recorded in
`progress.json` (one per folder): rerunning the same command redoes only incomplete shards, so an
interrupted run resumes without duplicates or losses, and a finished one only prints its summary.
`progress.json` also records the identity of every input file (`--input`, `--triples`; local:
size and SHA-256 of the content, gs://: the object's size and checksums). A rerun whose input
changed while its folder holds shards is refused with one error naming the file: the old shards
would mix with the new rows (duplicates, losses, a split drawn from two files). It is refused
rather than redone so that nothing written is thrown away unasked: use a new `--output_dir`, or
delete the old one to start over.

Every path (inputs, `--image_dir`, `--triples`, `--output_dir`) may be local or gs://bucket/...
(`semclip_jax.storage`): shards are written locally and uploaded as whole objects, and a bucket
folder resumes as a local one does. Any other scheme is refused at start, naming the option.

This module is the command line only (options, their checks, which reader feeds the writer): the
formats are read by `readers` and written by `shard_writer`, which library code imports instead.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable, Mapping, Sequence

from semclip_jax import storage
from semclip_jax.data import readers, sources, transforms
from semclip_jax.data.shard_writer import Counted, Item, PrepareError, write_shards
from semclip_jax.progress import HelpFormatter

FORMATS = ("csv", "webdataset", "ccneg_pt", "sugarcrepe_json")
ALL = "all"  # --split=all: every split of sources.SPLITS into <output_dir>/<split>
# The data config field `data.make_source` reads each split's shards from.
SPLIT_FIELDS = {"train": "path", "val": "eval_path", "test": "test_path"}


# ----------------------------------------------------------------------------------------------
# Library entry and command line.
# ----------------------------------------------------------------------------------------------
def _check_options(fmt: str, inputs: Sequence[str], output_dir: str, image_dir: str | None,
                   triples: str | None, csv_only: Sequence[Any], split: str | None) -> list[str]:
  """The input paths, made absolute, after checks that need no reading (a path of a scheme
  `storage` cannot open is refused first, naming its option: nothing is read or written)."""
  storage.check(output_dir, "--output_dir")
  for path in inputs:
    storage.check(path, "--input")
  for option, path in (("--image_dir", image_dir), ("--triples", triples)):
    if path is not None:
      storage.check(path, option)
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
    if not storage.exists(path):
      raise PrepareError(f"input not found: {path}")
  if fmt in ("csv", "ccneg_pt") and len(inputs) != 1:
    raise PrepareError(f"--format={fmt} takes exactly one --input, got {len(inputs)}")
  if fmt == "webdataset":  # a folder stands for its tars (not hidden ones: macOS's ._x.tar)
    inputs = [t for p in inputs for t in (
        [t for t in storage.glob(p, "*.tar") if not storage.basename(t).startswith(".")]
        if storage.isdir(p) else [p])]
    if not inputs:
      raise PrepareError("no .tar shards in the --input folder(s)")
  return [storage.absolute(p) for p in inputs]


def prepare(fmt: str, inputs: Sequence[str], output_dir: str, *, image_dir: str | None = None,
            triples: str | None = None, layout: str | None = None,
            columns: Mapping[str, str] | None = None, split: str | None = None,
            split_seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1),
            ccneg_official: bool = False, split_column: str | None = None,
            split_by: str = "image", ccneg_val_fraction: float = 0.05,
            records_per_shard: int = 10_000, num_workers: int | None = None,
            max_image_pixels: int | None = transforms.MAX_IMAGE_PIXELS,
            log: Callable[[str], Any] = print) -> dict:
  """Converts one input (see the module docstring) into shards in `output_dir`; returns the
  summary, for `split="all"` {split: summary} of the folders `<output_dir>/<split>`. Structural
  errors raise PrepareError (a ValueError)."""
  paths = _check_options(fmt, inputs, output_dir, image_dir, triples,
                         (layout, columns, split_column), split)
  if split_by not in sources.SPLIT_BY:
    raise PrepareError(f"unknown split_by {split_by!r}; choose one of {sources.SPLIT_BY}")
  if split not in (None, ALL, *sources.SPLITS):
    raise PrepareError(f"unknown split {split!r}; choose one of {(*sources.SPLITS, ALL)}")
  image_dir = image_dir and storage.absolute(image_dir)
  triples = triples and storage.absolute(triples)
  choose = dict(ratios=ratios, seed=split_seed, ccneg_official=ccneg_official,
                split_column=split_column, split_by=split_by,
                ccneg_val_fraction=ccneg_val_fraction)
  # The files whose content the shards come from, recorded so that a resume notices a change:
  # read once for the folders of all splits.
  input_files = [*(readers.sugarcrepe_files(paths) if fmt == "sugarcrepe_json" else paths),
                 *([triples] if triples else [])]
  input_identities = {path: storage.content_identity(path) for path in input_files}

  @functools.cache  # read once for all splits, and only when shards are missing
  def rows() -> tuple[list[sources.Triple], dict[str, str]]:
    if fmt == "csv":
      return sources.read_triples(paths[0], layout=layout, columns=columns,
                                  split_column=split_column), {}
    if fmt == "ccneg_pt":
      side = readers.read_side_triples(triples) if triples is not None else {}
      return readers.ccneg_triples(paths[0], image_dir, side)
    return readers.sugarcrepe_triples(paths), {}

  def write(split: str | None, folder: str) -> dict:
    settings = {"format": fmt, "inputs": paths, "image_dir": image_dir, "triples": triples,
                "layout": layout, "columns": dict(columns or {}), "split": split,
                "split_seed": split_seed if split else None,
                "ratios": list(ratios) if split else None,
                "ccneg_official": ccneg_official, "split_column": split_column,
                "split_by": split_by if split else None,
                "ccneg_val_fraction": ccneg_val_fraction if split and ccneg_official else None,
                "max_image_pixels": max_image_pixels}

    def reader(wanted):  # runs only when shards are missing: a finished run reads no input
      if fmt == "webdataset":
        side = readers.read_side_triples(triples) if triples is not None else {}
        return readers.webdataset_reader(paths, side)(wanted)
      triples_, errors = rows()
      chosen = sources.select_split(triples_, split, **choose)
      return Counted((Item(t.id, t.caption, t.paraphrase, t.negation, error=errors.get(t.id),
                           image_path=t.image, image_dir=image_dir, image_key=t.image)
                      for t in chosen), len(chosen))  # workers read the images, kept inside

    return write_shards(reader, folder, settings, records_per_shard=records_per_shard,
                        num_workers=num_workers, log=log,
                        desc=f"prepare {split}" if split else "prepare", inputs=input_identities,
                        max_image_pixels=max_image_pixels)

  if split != ALL:
    summary = write(split, output_dir)
    log(_usage(fmt, split, output_dir))
    return summary
  summaries = {}
  for name in sources.SPLITS:
    summaries[name] = write(name, storage.join(output_dir, name))
    if not summaries[name]["written"]:
      log(f"warning: split {name!r} has no records; change --ratios or the split options")
  log(_usage(fmt, split, output_dir))
  return summaries


def _usage(fmt: str, split: str | None, output_dir: str) -> str:
  """The last line printed: the flags that read what was written."""
  flag = lambda name, folder: f"--config.data.{SPLIT_FIELDS[name]}={folder}"
  if split == ALL:
    return "train with: --config.data.kind=array_record " + " ".join(
        flag(name, storage.join(output_dir, name)) for name in sources.SPLITS)
  if split is not None:
    return f"use with: --config.data.kind=array_record {flag(split, output_dir)}"
  if fmt == "webdataset":
    return (f"use with: --config.data.kind=array_record {flag('train', output_dir)}, with "
            f"validation and test shards prepared from other tars as {flag('val', '...')} "
            f"{flag('test', '...')}")
  return (f"every row is in {output_dir}; as an evaluator's own data (split='all'): "
          f"--config.evals.<name>.data.kind=array_record "
          f"--config.evals.<name>.data.eval_path={output_dir}; to train, --split=all writes "
          "train, val and test folders")


def _columns(text: str) -> dict[str, str]:
  return dict(pair.split("=", 1) for pair in text.split(","))  # ValueError: argparse reports it


def _ratios(text: str) -> tuple[float, ...]:
  return tuple(float(r) for r in text.split(","))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.data.prepare",
                                   description=__doc__, formatter_class=HelpFormatter)
  add = parser.add_argument
  add("--format", required=True, choices=FORMATS, help="the input's format")
  add("--input", required=True, nargs="+",
      help="input file(s); a folder stands for its webdataset tars or SugarCrepe++ subset files")
  add("--output_dir", required=True, help="gets the shards, progress.json and summary.json "
      "(--split=all: in its train, val and test folders); local or gs://bucket/folder")
  add("--image_dir", help="image folder (ccneg_pt: the CC-Neg folder or its image folder)")
  add("--triples", help="webdataset, ccneg_pt: CSV/JSONL of caption, paraphrase, negation")
  add("--layout", choices=sorted(sources.LAYOUTS), help="csv: the paper's layout; unset: "
      "detected from the header")
  add("--columns", type=_columns, help="csv: field=column,... (image, caption, paraphrase, "
      "negation, optionally id)")
  add("--split", choices=(*sources.SPLITS, ALL), help="all: each split into its folder "
      "<output_dir>/train, val, test (what training reads); train, val or test: that split alone; "
      "unset: every row into <output_dir>")
  add("--split_seed", type=int, default=0, help="seed of the split")
  add("--ratios", type=_ratios, default="0.8,0.1,0.1", help="train,val,test shares of images "
      "(--split_by=rows: of rows)")
  add("--split_by", choices=sources.SPLIT_BY, default="image",
      help="image: no image in two splits; rows: the official SemCLIP code's random row split "
      "(leaks images between splits)")
  add("--ccneg_official", action="store_true", help="CC-Neg's split: the last 40,000 are 'test', "
      "'val' a share of the rest's images")
  add("--ccneg_val_fraction", type=float, default=0.05,
      help="with --ccneg_official: share of the training part's images that is 'val'")
  add("--split_column", help="csv: a column naming each row's split")
  add("--records_per_shard", type=int, default=10_000, help="input records per shard")
  add("--num_workers", type=int, help="image-checking threads; unset: min(8, CPUs)")
  add("--max_image_pixels", type=int, default=transforms.MAX_IMAGE_PIXELS,
      help="an image whose header declares more pixels is skipped unread (as "
      "data.max_image_pixels in training)")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    prepare(args.format, args.input, args.output_dir, image_dir=args.image_dir,
            triples=args.triples, layout=args.layout, columns=args.columns, split=args.split,
            split_seed=args.split_seed, ratios=args.ratios, ccneg_official=args.ccneg_official,
            split_column=args.split_column, split_by=args.split_by,
            ccneg_val_fraction=args.ccneg_val_fraction, records_per_shard=args.records_per_shard,
            num_workers=args.num_workers, max_image_pixels=args.max_image_pixels,
            log=lambda m: print(m, flush=True))  # in order with the progress lines on stderr
  except (ValueError, OSError) as e:  # structural: missing column or field, unreadable input
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
