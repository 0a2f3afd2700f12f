"""Benchmarks: `python -m semclip_jax.bench --what=step|input|cache|peak|all|loss_memory|pod|eval|save`.

`step` times the full training step (image tower on B images, text tower on the 3B captions in one
call, loss, backward, AdamW update) after compilation and warm-up: median step time, samples/s,
model FLOPs per step (counted analytically, see `flops.train_step_flops`), MFU against a matmul
peak measured in the same run, XLA's own FLOP count, peak memory and compile time. Captions are
drawn from the vendored SugarCrepe++ CSV (`data/vendor/`) and cut to their length bucket exactly
as the input pipeline does.

`input` measures the input pipeline's records/s, from source to finished batches (decode, crop,
normalise, tokenize three captions, batch), for the built-in shapes dataset (rendered on the fly)
and for JPEG files on disk (CSV + image folder, the paper's layout), each with the main process
alone and with grain worker processes.

`cache` runs the frozen-image training loop end to end (JPEGs from disk through the input
pipeline into the step) without and with cached image embeddings, in one run
(`bench.cached_step`).

`peak` measures the dense matmul peak (float32 on CPU, bfloat16 on GPU/TPU) that MFU is quoted
against. Every measurement prints a table and one JSON line. Absolute rates depend on the machine:
compare rows of one run.

`loss_memory` (the sharded loss's per-device memory, chunked vs unchunked, on 8 forced host
devices) and `pod` (the full step compiled, not run, for 256 forced host devices) are
`semclip_jax.bench.scale`'s measurements; `all` leaves them out (the pod simulation compiles for
minutes). The same step against open_clip in PyTorch: `python -m semclip_jax.bench.peers`.

`eval` times two eval rounds of the sugarcrepe_pp config's evaluators (`bench.evaluation`).

`save` times a checkpoint save of the `--preset` train state to disk, waited for: a preemption
save's budget (`bench.checkpoint_save`).
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Any, Sequence

import jax

from semclip_jax.bench import (cached_step, checkpoint_save, evaluation, input_rate, peak,
                               results as results_lib, scale, step)
from semclip_jax.progress import HelpFormatter  # the commands' one --help layout

# --what -> the module that measures it. Each module has `add_arguments(parser)` (its flags; every
# module's are on the one parser, so `--help` lists them all and a module may read another's, as
# input reads --preset), `measure(args) -> list[dict]` (records, one JSON line each; `args.what`
# says which mode when a module serves several) and `print_table(results)` (rows of its own
# records, skipping others'). A new measurement is its module and one line here.
MODES: dict[str, ModuleType] = {
    "step": step,  # measures the peak first: MFU needs one from the same run
    "input": input_rate,
    "cache": cached_step,
    "peak": peak,
    "loss_memory": scale,
    "pod": scale,
    "eval": evaluation,
    "save": checkpoint_save,
}
# --what names that run several modes in turn. `all` leaves out the scale simulations (the pod
# compiles for minutes).
GROUPS: dict[str, tuple[str, ...]] = {"all": ("step", "input")}


def modules(what: str) -> list[ModuleType]:
  """The modules `--what=what` runs, in order, each once."""
  return list(dict.fromkeys(MODES[name] for name in GROUPS.get(what, (what,))))


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m semclip_jax.bench", description=__doc__,
                                   formatter_class=HelpFormatter)
  parser.add_argument("--what", choices=[*MODES, *GROUPS], default="all",
                      help="the measurement (see above); all = step then input")
  for module in dict.fromkeys(MODES.values()):
    module.add_arguments(parser)
  parser.add_argument("--json_out", default=None, help="also append the JSON lines to this file")
  parser.add_argument("--json_only", action="store_true",
                      help="print only the JSON lines (how a re-run on forced devices answers)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = make_parser().parse_args(argv)
  results: list[dict[str, Any]] = []
  for module in modules(args.what):
    results += module.measure(args)
  input_rate.relate_to_step(results)  # under `all`: input rates against the step's consumption

  stamp = results_lib.machine_stamp()
  if not args.json_only:
    print(f"# {stamp['machine']}, jax {stamp['jax']}, {jax.devices()[0].device_kind}")
    for module in modules(args.what):
      module.print_table(results)
  results_lib.emit_json_lines(results, stamp, args.json_out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
