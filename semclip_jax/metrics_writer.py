"""Training and evaluation metrics: one JSONL file and TensorBoard event files (no TensorFlow)."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping


class MetricsWriter:
  """Appends `{"step": s, name: value, ...}` lines to `workdir/metrics.jsonl` and writes the same
  scalars to TensorBoard events under `workdir/tensorboard`. Disabled on non-main processes."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self.path = os.path.join(workdir, "metrics.jsonl")
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a", encoding="utf-8") as f:
      # NaN/Inf are written as strings: JSON has no literal for them.
      f.write(json.dumps({"step": step, **{k: v if math.isfinite(v) else str(v)
                                           for k, v in values.items()}}) + "\n")
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def results_table(results: Mapping[str, float], title: str = "") -> str:
  """A Markdown table of evaluation results, one row per metric."""
  lines = [f"### {title}", ""] if title else []
  lines += ["| metric | value |", "| --- | ---: |"]
  lines += [f"| {name} | {value:.4f} |" for name, value in sorted(results.items())]
  return "\n".join(lines)
