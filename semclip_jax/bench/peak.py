"""The dense matmul peak of this machine, measured in the same run as the step: `--what=peak`.

MFU is quoted against it: float32 on CPU, bfloat16 on GPU/TPU (the dtypes the step computes in).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def default_peak_dtype() -> str:
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def matmul_peak(dtype: str | None = None, n: int | None = None, repeats: int = 5) -> dict[str, Any]:
  """FLOP/s of an n×n×n matmul (the best of `repeats`: a peak, not a typical rate), as a record."""
  dtype = dtype or default_peak_dtype()
  n = n or (4096 if jax.default_backend() == "cpu" else 16384)
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.dtype(dtype)) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.dtype(dtype)))
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return {"what": "peak", "dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / min(times),
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The peak's flags (shared with `semclip_jax.bench.peers`)."""
  parser.add_argument("--peak_n", type=int, default=None,
                      help="side of the peak-measuring matmul (default: 4096 on CPU, 16384 on "
                           "GPU/TPU)")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """[the `matmul_peak` record] in the backend's default dtype."""
  return [matmul_peak(n=args.peak_n)]


def peak_line(r: dict[str, Any]) -> str:
  return (f"peak   {r['dtype']} {r['n']}³ matmul on {r['device']}: "
          f"{r['flops_per_s'] / 1e9:,.1f} GFLOP/s")


def print_table(results: Sequence[dict[str, Any]]) -> None:
  for r in results:
    if r["what"] == "peak":
      print(peak_line(r))
