"""Files in and out: captions (CSV, JSONL, ArrayRecord) -> the records with paraphrase and negation.

The output format follows the output path: `.csv` or `.jsonl` get every input record (for
ArrayRecord input: its id and caption) with the columns `paraphrased` and `negation` (the paper's
CSV layout; names configurable) and per generated column `<col>_status`, `<col>_verified` and
`<col>_reason` (see `generate`). Any other path is a folder of ArrayRecord shards written by
`shard_writer.write_shards` from ArrayRecord input (the records keep their images; a record whose
paraphrase or negation failed is skipped and counted in its `summary.json`). A CSV of captions
becomes shards in two steps: this tool to a CSV, then `python -m semclip_jax.data.prepare`.

Files are written with `atomic_io` (a temporary file, synced and renamed), so a reader sees the
old file or the new one, whole. Statistics go to `<output>.stats.json` (a folder:
`triples_stats.json` in it).

Input and output may be local or gs:// (`semclip_jax.storage`; a gs:// file or shard is uploaded
as one object when complete). The answer cache is SQLite, which needs a local file: beside a local
output by default, under `cache_root()` for a gs:// one, and a gs:// `--cache` is refused.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

from semclip_jax import atomic_io, storage
from semclip_jax.data import shard_writer, sources
from semclip_jax.data.triples.cache import Cache, check_local
from semclip_jax.data.triples.generate import (EMPTY_CAPTION, FAILED, KINDS, FieldResult, Settings,
                                               TripleGenerator)
from semclip_jax.data.triples.protocol import Backend

DEFAULT_COLUMNS = {"paraphrase": "paraphrased", "negation": "negation"}  # the paper's CSV names
FLAGS = ("status", "verified", "reason")
_SHARDS_NEED_RECORDS = ("ArrayRecord output needs ArrayRecord input (the records carry the "
                        "images); write a .csv, then: python -m semclip_jax.data.prepare "
                        "--format=csv ...")


def file_format(path: str) -> str:
  if path.endswith(".csv"):
    return "csv"
  if path.endswith((".jsonl", ".json")):
    return "jsonl"
  return "array_record"  # a folder of shards, or one .array_record file


@dataclasses.dataclass
class Table:
  format: str
  header: list[str]
  rows: list[dict[str, Any]]  # array_record: {"id", "caption"} of each record
  source: Any = None  # array_record: the ArrayRecordSource, read again for the images


def read_input(path: str, caption_column: str = "caption") -> Table:
  if not storage.exists(storage.check(path, "--input")):
    raise ValueError(f"input not found: {path}")
  fmt = file_format(path)
  if fmt == "array_record":
    if caption_column != "caption":
      raise ValueError("ArrayRecord triples keep the caption in the field 'caption'")
    source = sources.ArrayRecordSource(path)
    rows = [{"id": str(r.get("id")), "caption": r.get("caption")}
            for r in (source[i] for i in range(len(source)))]
    return Table(fmt, ["id", "caption"], rows, source)
  header, rows, _ = sources.read_rows(path)
  if caption_column not in header:
    raise ValueError(f"{path}: no caption column {caption_column!r}; columns are {header}")
  return Table(fmt, header, rows)


def _field(results: Mapping[str, Mapping[str, FieldResult]], caption: Any, kind: str
           ) -> FieldResult:
  found = results.get(caption) if isinstance(caption, str) else None
  return found[kind] if found else FieldResult("", FAILED, "", EMPTY_CAPTION)


def output_rows(table: Table, results: Mapping[str, Mapping[str, FieldResult]],
                caption_column: str, columns: Mapping[str, str]
                ) -> tuple[list[str], list[dict[str, Any]]]:
  """(header, rows): the input's columns, the generated ones where they were (else next), then
  the flags: a captions file becomes the paper's layout (..., caption, paraphrased, negation)."""
  flags = [f"{columns[kind]}_{flag}" for kind in KINDS for flag in FLAGS]
  header = [c for c in table.header if c not in flags]
  header += [columns[kind] for kind in KINDS if columns[kind] not in header] + flags
  rows = []
  for row in table.rows:
    out = dict(row)
    for kind in KINDS:
      result = _field(results, row.get(caption_column), kind)
      out[columns[kind]] = result.text
      for flag in FLAGS:
        out[f"{columns[kind]}_{flag}"] = getattr(result, flag)
    rows.append(out)
  return header, rows


def write_table(path: str, header: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
  """`rows` as a CSV (columns `header`) or JSONL file, by `path`'s extension; atomically."""
  with atomic_io.open_replacing(path, newline="") as f:
    if file_format(path) == "csv":
      writer = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
    else:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _digest(results: Mapping[str, Mapping[str, FieldResult]]) -> str:
  text = json.dumps([[c, *(r[k].text for k in KINDS)] for c, r in sorted(results.items())])
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_records(table: Table, results: Mapping[str, Mapping[str, FieldResult]], output_dir: str,
                  settings: Mapping[str, Any], *, records_per_shard: int = 10_000,
                  log: Callable[[str], Any] = print) -> dict:
  """ArrayRecord shards of the input records with their new paraphrase and negation."""
  if table.format != "array_record":
    raise ValueError(_SHARDS_NEED_RECORDS)

  def records(wanted):
    for index, row in enumerate(table.rows):
      if not wanted(index):
        yield None
        continue
      record = table.source[index]
      texts = [_field(results, row["caption"], kind).text or None for kind in KINDS]
      yield shard_writer.Item(row["id"], row["caption"], *texts, image=record.get("image"),
                              image_key=record.get("image_key"))

  # The results belong to the settings: a folder holding shards of other answers is refused.
  reader = lambda wanted: shard_writer.Counted(records(wanted), len(table.rows))
  return shard_writer.write_shards(reader, output_dir, {**settings, "results": _digest(results)},
                                   records_per_shard=records_per_shard, log=log,
                                   desc="triples shards")


def cache_root() -> str:
  """The host folder of the answer caches of gs:// outputs (SQLite needs a local file)."""
  return os.path.join(os.path.dirname(storage.default_cache_root()), "triples_cache")


def default_paths(output: str) -> tuple[str, str]:
  """(cache, statistics) paths beside the output; for a gs:// output the cache is local, at
  `<cache_root()>/gs/<bucket>/<key>` (the same for every run of that output on this host)."""
  if file_format(output) == "array_record":
    cache, stats = (storage.join(output, "triples_cache.sqlite"),
                    storage.join(output, "triples_stats.json"))
  else:
    cache, stats = f"{output}.cache.sqlite", f"{output}.stats.json"
  if storage.is_remote(cache):
    cache = storage.local_mirror(cache, cache_root())
  return cache, stats


def log_summary(summary: Mapping[str, Any], log: Callable[[str], Any]) -> None:
  for kind, counts in summary["counts"].items():
    log(f"{kind}: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
  for category, reasons in summary["reasons"].items():
    for reason, n in reasons.items():
      log(f"  {category:>8} {n:>7}  {reason}")
  for category in ("rejected", "failed"):
    for example in summary["examples"].get(category, [])[:3]:
      log(f"  e.g. {category}: {json.dumps(example, ensure_ascii=False)[:240]}")


def run(input_path: str, output: str, generator: Backend, verifier: Backend | None = None, *,
        settings: Settings = Settings(), cache_path: str | None = None,
        caption_column: str = "caption", columns: Mapping[str, str] | None = None,
        records_per_shard: int = 10_000, log: Callable[[str], Any] = print,
        progress_every: float = 30.0) -> dict:
  """Generates the triples of `input_path` into `output`; returns the statistics (also written
  beside the output). `backend_failures` > 0: some fields failed on the backend and a rerun will
  retry them (ArrayRecord output is then not written yet)."""
  start = time.monotonic()
  columns = {**DEFAULT_COLUMNS, **(columns or {})}
  storage.check(input_path, "--input")
  storage.check(output, "--output")
  if cache_path is not None:
    check_local(cache_path, "--cache")
  if file_format(output) == "array_record" and file_format(input_path) != "array_record":
    raise ValueError(_SHARDS_NEED_RECORDS)
  table = read_input(input_path, caption_column)
  default_cache, stats_path = default_paths(output)
  cacheable = generator.cacheable or (verifier is not None and verifier.cacheable)
  with Cache(cache_path or default_cache) if cacheable else contextlib.nullcontext() as cache:
    tool = TripleGenerator(generator, verifier, cache=cache, settings=settings,
                           progress_every=progress_every)
    results = tool.run(row.get(caption_column) for row in table.rows)
  summary = tool.stats.summary()
  failures = sum(r[k].backend_error for r in results.values() for k in KINDS)
  summary.update(records=len(table.rows), unique_captions=len(results),
                 empty_captions=sum(not (isinstance(r.get(caption_column), str)
                                         and r[caption_column].strip()) for r in table.rows),
                 backend_failures=failures, output=output,
                 seconds=round(time.monotonic() - start, 3))
  if file_format(output) != "array_record":
    write_table(output, *output_rows(table, results, caption_column, columns))
  elif failures == 0:
    settings_id = {"tool": "triples", "input": storage.absolute(input_path),
                   "generator": generator.model_id, "verifier": (verifier or generator).model_id}
    summary["shards"] = write_records(table, results, output, settings_id,
                                      records_per_shard=records_per_shard, log=log)
  atomic_io.write_json(stats_path, summary, indent=1, ensure_ascii=False)
  log_summary(summary, log)
  if failures:
    log(f"{failures} fields failed on the backend (see 'failed' above); rerun the same command to "
        "retry them" + ("" if file_format(output) != "array_record" else
                        "; the shards are written once none fails"))
  log(f"{len(table.rows)} records, {len(results)} distinct captions -> {output} "
      f"(statistics: {stats_path}" + (f"; answer cache: {cache_path or default_cache}"
                                      if cacheable and storage.is_remote(output) else "") + ")")
  return summary
