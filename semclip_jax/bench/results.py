"""What every benchmark's records share: the rate fields of a timed step, XLA's memory analysis,
the machine stamp and the JSON-lines output (one line per record, the machine-readable result)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from typing import Any, Sequence

import jax

MIB, GIB = 2**20, 2**30
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes")


def memory_analysis(compiled: Any) -> dict[str, int]:
  """XLA's per-device buffer sizes of a compiled program, plus `total`: its peak estimate.

  The generated code is left out (it is host memory on every backend). `total` = arguments +
  temporaries + outputs − aliased outputs: an output aliased to a donated argument reuses its
  buffer, so it is counted once.
  """
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  sizes = {f.removesuffix("_in_bytes"): int(getattr(analysis, f, 0)) for f in MEMORY_FIELDS}
  sizes["total"] = (sizes["argument_size"] + sizes["temp_size"] + sizes["output_size"]
                    - sizes["alias_size"])
  return sizes


def max_rss_bytes() -> int:
  """This process' peak resident memory so far (the host cost of compiling, on CPU)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory_bytes() -> int:
  """The first device's allocator high-water mark; on CPU (no allocator stats) the process' RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return max_rss_bytes()


def rate_fields(batch_size: int, times: Sequence[float], flops: dict[str, int],
                peak: dict[str, Any]) -> dict[str, Any]:
  """A step record's timing fields: median and min of `times` (s), samples/s, the model FLOPs
  (`flops.train_step_flops`' parts) and MFU against `peak` (a `peak.matmul_peak` record)."""
  median = statistics.median(times)
  return {"step_s_median": median, "step_s_min": min(times), "steps_timed": len(times),
          "samples_per_s": batch_size / median, "model_flops": flops["total"],
          "model_flops_parts": flops, "achieved_flops_per_s": flops["total"] / median,
          "peak_flops_per_s": peak["flops_per_s"], "peak_dtype": peak["dtype"],
          "mfu": flops["total"] / median / peak["flops_per_s"]}


PEAK_DRIFT_LIMIT = 0.10  # a peak that moves more than this during a run measured a busy machine


def judge_mfu(records: Sequence[dict[str, Any]], peak_before: dict[str, Any],
              peak_after: dict[str, Any]) -> None:
  """Marks the MFU of each step record (in place) against the peak measured before and after its
  timed steps. An MFU above 100% (the peak was measured low) or a peak that moved by more than
  `PEAK_DRIFT_LIMIT` (the machine's speed changed under the run) is invalid: `mfu` becomes None,
  `mfu_invalid` says why and `mfu_measured` keeps the number, which is never printed as an MFU."""
  drift = abs(peak_after["flops_per_s"] - peak_before["flops_per_s"]) / peak_before["flops_per_s"]
  for record in records:
    if record.get("mfu") is None:
      continue
    record.update(peak_after_flops_per_s=peak_after["flops_per_s"], peak_drift=drift)
    reasons = ([f"MFU {100 * record['mfu']:.0f}% > 100%"] if record["mfu"] > 1 else []) + (
        [f"the matmul peak moved {100 * drift:.0f}% during the run"] if drift > PEAK_DRIFT_LIMIT
        else [])
    if reasons:
      record.update(mfu_measured=record["mfu"], mfu=None, mfu_invalid="; ".join(reasons))


def mfu_text(record: dict[str, Any]) -> str:
  """"MFU 71.2%", or "MFU invalid (why)" for a record `judge_mfu` refused."""
  if record.get("mfu") is None:
    return f"MFU invalid ({record.get('mfu_invalid', 'not measured')})"
  return f"MFU {100 * record['mfu']:.1f}%"


def machine() -> str:
  """The host in one line: architecture, CPU count, OS, Python."""
  return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
          f"Python {platform.python_version()}")


def machine_stamp() -> dict[str, Any]:
  """Merged into every JSON line: where, when and with which jax it was measured."""
  return {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__}


def emit_json_lines(results: Sequence[dict[str, Any]], stamp: dict[str, Any],
                    json_out: str | None = None) -> None:
  """Prints each record as one JSON line with `stamp` (machine, date, versions) merged in, and
  appends the lines to `json_out` if given: the machine-readable output of every benchmark CLI."""
  lines = [json.dumps({**r, **stamp}) for r in results]
  print("\n".join(lines), flush=True)
  if json_out:
    with open(json_out, "a", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
