"""Memory at scale, measured on forced host devices: `--what=loss_memory` and `--what=pod`.

`loss_memory` compiles SemCLIP's sharded loss (value and gradient w.r.t. the four
embeddings) exactly as training applies it (`Objective` in `shard_map` over the batch axes) on 8
devices, once per logits chunk size, and reports XLA's per-device memory analysis: the peak
temporaries beside the analytic size of one logits block (local batch × columns × 4 bytes, the
O(local batch × chunk) term the chunking bounds) and of the gathered columns (2 × global batch ×
dim × 4 bytes, a floor that chunking does not change). `--execute` also runs each program once on
random embeddings, to show the chunk sizes compute the same loss.

`pod` lowers and compiles (never runs) the full train step for a preset (B/16) at pod scale
(global batch 32,768 on 256 devices) for several ('data', 'fsdp') meshes, from an abstract train
state (`jax.eval_shape`: no parameter is allocated), and reports per device XLA's memory analysis
(arguments, temporaries, outputs, aliased donations), whether the total fits a 16 GiB TPU core,
the collectives XLA inserted (ops of the compiled HLO by kind; an async `-start` counts under its
base kind; a loop body's ops count once, not once per trip) and the lowering and compile times.

Both need more devices than a CPU machine shows: with fewer, the measurement re-runs itself in a
subprocess (`python -m semclip_jax.bench --json_only`) with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (the flag must be set before jax is
imported) and reads its JSON lines back. The figures are the CPU compiler's buffer
assignment for the per-device (SPMD-partitioned) program: the TPU compiler fuses, schedules and
pads differently, so they estimate, not reproduce, a TPU's usage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from semclip_jax import objective, optim, sharding, train, train_step
from semclip_jax.bench import results as results_lib, step
from semclip_jax.bench.results import GIB
from semclip_jax.models.layers import REMAT_POLICIES

FORCE_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_CHILD_ENV = "SEMCLIP_BENCH_FORCED_DEVICES"  # set in the re-run: it must not re-run itself again
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# An HLO instruction of a collective: the op name followed by its operand list. Instruction names
# (`%all-reduce.3`) are followed by " =" or a delimiter, never "(", and `-done` halves do not match.
_COLLECTIVE_OP = re.compile(r"(?<![\w.%-])(" + "|".join(COLLECTIVES) + r")(-start)?\(")

# The simulations compile and never run: the memory analysis and the collectives come from XLA's
# HLO passes and buffer assignment, which LLVM's optimisation level does not touch (the tiny pod
# step: the same argument/temp/output bytes and collective counts, compiled in about half the
# time), so the backend's code generation is left unoptimised.
COMPILE_ONLY_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}
LOSS_CHUNK_SIZES = (None, 1024, 256)
POD_MESHES = ((256, 1), (16, 16), (1, 256))
POD_CHUNK_SIZES = (1024, None)
POD_TOWERS = ("both", "text")


# ----------------------------------------------------------------------------------------------
# Pieces shared by both measurements.
# ----------------------------------------------------------------------------------------------
def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective ops in an HLO module's text by kind (`all-reduce-start` counts as all-reduce)."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_OP.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


def _log(message: str) -> None:
  # stderr, so a parent reading our stdout for JSON lines still shows progress of long compiles.
  print(f"[bench.scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _devices(num_devices: int) -> list[jax.Device]:
  if jax.device_count() < num_devices:
    raise RuntimeError(f"{num_devices} devices needed, {jax.device_count()} available: set "
                       f"XLA_FLAGS={FORCE_DEVICES_FLAG}={num_devices} before jax is imported")
  return jax.devices()[:num_devices]


def needs_subprocess(num_devices: int) -> bool:
  """Whether to re-run on forced host devices: too few here, and this is not the re-run (where
  too few means the flag did not take, and `_devices` says so)."""
  return jax.device_count() < num_devices and not os.environ.get(_CHILD_ENV)


def run_in_subprocess(what: str, num_devices: int, cli_args: Sequence[str]) -> list[dict[str, Any]]:
  """Runs `python -m semclip_jax.bench --what=... --json_only ...` (this module's measurement
  behind the benchmark CLI) on `num_devices` forced host devices and returns its JSON lines; its
  stderr (progress) passes through."""
  env = dict(os.environ)
  flags = re.sub(rf"{FORCE_DEVICES_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = f"{flags} {FORCE_DEVICES_FLAG}={num_devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"  # the flag forces host devices: a GPU would hide them
  env[_CHILD_ENV] = "1"
  # The checkout holding semclip_jax/bench/scale.py, so the child imports this same code.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
  command = [sys.executable, "-m", "semclip_jax.bench", f"--what={what}", "--json_only",
             *cli_args]
  _log(f"{jax.device_count()} device(s) here; re-running on {num_devices} forced host devices: "
       f"XLA_FLAGS={env['XLA_FLAGS']} {' '.join(command[1:])}")
  process = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
  if process.returncode:
    raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}; "
                       f"stdout tail:\n{process.stdout[-4000:]}")
  return [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]


def _chunks_arg(chunk_sizes: Sequence[int | None]) -> str:
  return ",".join("none" if c is None else str(c) for c in chunk_sizes)


def _parse_chunks(text: str) -> tuple[int | None, ...]:
  return tuple(None if c.strip().lower() in ("none", "0") else int(c) for c in text.split(",") if c)


def _parse_remats(text: str) -> tuple[str, ...]:
  remats = tuple(r.strip() for r in text.split(",") if r.strip())
  unknown = [r for r in remats if r not in REMAT_POLICIES]
  if unknown:
    raise argparse.ArgumentTypeError(f"unknown remat policies {unknown}; "
                                     f"choose from {list(REMAT_POLICIES)}")
  return remats


def _parse_meshes(text: str) -> tuple[tuple[int, int], ...]:
  """'256x1,16x16' -> ((256, 1), (16, 16)): data × fsdp."""
  meshes = []
  for item in text.split(","):
    data, fsdp = item.lower().split("x")
    meshes.append((int(data), int(fsdp)))
  return tuple(meshes)


# ----------------------------------------------------------------------------------------------
# 1. The sharded loss: per-device memory against the logits chunk size.
# ----------------------------------------------------------------------------------------------
def compile_loss(global_batch: int, dim: int, chunk_size: int | None, mesh: jax.sharding.Mesh,
                 loss_name: str = "semclip") -> Any:
  """jit(value_and_grad) of the configured loss w.r.t. (zi, zt, zp, zn), lowered for float32
  [global_batch, dim] embeddings split over the mesh's batch axes, and compiled."""
  config = objective.default_config()
  config.update(name=loss_name, chunk_size=chunk_size)
  loss = objective.Objective(config, dim)

  def value(zi, zt, zp, zn, logit_scale):
    return loss(zi, zt, zp, zn, logit_scale, mesh)[0]

  batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  # The gradients stay split like the embeddings, as they flow back into the sharded towers.
  fn = jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2, 3)),
               out_shardings=(replicated, (batch,) * 4))
  embeddings = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=batch)
  scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  return fn.lower(embeddings, embeddings, embeddings, embeddings, scale).compile(
      compiler_options=COMPILE_ONLY_OPTIONS)


def loss_memory(global_batch: int = 4096, dim: int = 512,
                chunk_sizes: Sequence[int | None] = LOSS_CHUNK_SIZES, num_devices: int = 8,
                execute: bool = False) -> list[dict[str, Any]]:
  """Per-device memory of the sharded SemCLIP loss and its gradient, one record per chunk size.

  Each record: XLA's memory analysis (`memory`, bytes per device; `temp_size` is the peak of
  temporaries), the analytic size of one logits block `logits_bytes` = local batch × columns × 4
  (one direction; columns = chunk size or the global batch) and of the two gathered column sets
  `gathered_columns_bytes` = 2 × global batch × dim × 4, compile time, and with `execute` the
  loss value on random embeddings (equal across chunk sizes). Runs in a subprocess on forced host
  devices when fewer than `num_devices` are available.
  """
  if needs_subprocess(num_devices):
    return run_in_subprocess("loss_memory", num_devices, [
        f"--loss_batch={global_batch}", f"--embed_dim={dim}",
        f"--loss_chunk_sizes={_chunks_arg(chunk_sizes)}", f"--loss_devices={num_devices}",
        *(["--execute"] if execute else [])])
  mesh = sharding.make_mesh(-1, 1, devices=_devices(num_devices))
  if global_batch % mesh.size:
    raise ValueError(f"global batch {global_batch} is not divisible by {mesh.size} devices")
  local = global_batch // mesh.size
  results = []
  for chunk in chunk_sizes:
    _log(f"loss_memory: B={global_batch} D={dim} chunk={chunk} on {mesh.size} devices")
    start = time.perf_counter()
    compiled = compile_loss(global_batch, dim, chunk, mesh)
    compile_s = time.perf_counter() - start
    cols = min(chunk or global_batch, global_batch)
    record = {
        "what": "loss_memory", "loss": "semclip", "global_batch": global_batch,
        "local_batch": local, "dim": dim, "chunk_size": chunk, "devices": mesh.size,
        "memory": results_lib.memory_analysis(compiled), "logits_bytes": local * cols * 4,
        "gathered_columns_bytes": 2 * global_batch * dim * 4, "compile_s": round(compile_s, 2),
        "backend": jax.default_backend(),
    }
    if execute:
      keys = jax.random.split(jax.random.key(0), 4)
      batch = sharding.batch_sharding(mesh)
      embeddings = [jax.device_put(jax.random.normal(k, (global_batch, dim), jnp.float32), batch)
                    for k in keys]
      scale = jax.device_put(jnp.asarray(2.6592, jnp.float32), sharding.replicated(mesh))
      value, grads = compiled(*embeddings, scale)
      record["loss_value"] = float(value)
      record["grad_norm"] = float(jnp.sqrt(sum(jnp.sum(g * g) for g in grads)))
    results.append(record)
  return results


# ----------------------------------------------------------------------------------------------
# 2. The full train step at pod scale, compiled for forced host devices.
# ----------------------------------------------------------------------------------------------
def pod_config(preset: str, global_batch: int, *, data: int, fsdp: int, freeze_image: bool,
               dtype: str = "bfloat16", chunk_size: int | None = 1024, grad_accum_steps: int = 1,
               remat: str = "none") -> ml_collections.ConfigDict:
  """The trainer's config for the simulated run: the paper's recipe, `preset` from random init,
  bf16 compute (parameters stay float32), the given mesh, loss chunk, accumulation and remat."""
  config = step.bench_config(preset, global_batch, freeze_image=freeze_image, dtype=dtype,
                              chunk_size=chunk_size, remat=remat)
  config.optim.grad_accum_steps = grad_accum_steps
  config.mesh.update(data=data, fsdp=fsdp)
  return config


def abstract_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                         ) -> tuple[nnx.GraphDef, Any, Any, Any]:
  """(graphdef, abstract sharded TrainState, its shardings, optimizer) of a fresh run.

  `train.init_train_state` traced by `jax.eval_shape`: the state is ShapeDtypeStructs carrying
  their NamedShardings, so nothing of the model is allocated.
  """
  tx = optim.make_optimizer(config.optim, config.total_steps)
  graphdefs = []

  def build():
    graphdef, state = train.init_train_state(config, tx)
    graphdefs.append(graphdef)  # static: the trace's only non-array output
    return state

  shapes = jax.eval_shape(build)
  shardings = sharding.tree_shardings(shapes, mesh, tuple(config.mesh.rules))
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       shapes, shardings)
  return graphdefs[0], state, shardings, tx


def abstract_batch(global_batch: int, image_size: int, text_length: int,
                   mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The input pipeline's batch as shapes: float32 images [B, S, S, 3], int32 tokens [B, 3, L]."""
  split = sharding.batch_sharding(mesh)
  return {"image": jax.ShapeDtypeStruct((global_batch, image_size, image_size, 3), jnp.float32,
                                        sharding=split),
          "tokens": jax.ShapeDtypeStruct((global_batch, 3, text_length), jnp.int32,
                                         sharding=split)}


def compile_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       text_length: int) -> tuple[Any, dict[str, Any]]:
  """Lowers and compiles the trainer's jitted step for `config` on `mesh` without running it.

  Returns the compiled executable and facts about it: parameter counts, lowering/compile times.
  """
  start = time.perf_counter()
  graphdef, state, shardings, tx = abstract_train_state(config, mesh)
  step = train_step.make_train_step(graphdef, tx, mesh=mesh, state_shardings=shardings,
                                    grad_accum_steps=config.optim.grad_accum_steps)
  batch = abstract_batch(config.data.batch_size, config.data.image_size, text_length, mesh)
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options=COMPILE_ONLY_OPTIONS)
  compile_s = time.perf_counter() - start
  count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))
  return compiled, {"params": count(state.params) + count(state.rest),
                    "trained_params": count(state.params), "lower_s": round(lower_s, 2),
                    "compile_s": round(compile_s, 2)}


def pod_simulation(preset: str = "B/16", global_batch: int = 32768, text_length: int = 32,
                   meshes: Sequence[tuple[int, int]] = POD_MESHES,
                   chunk_sizes: Sequence[int | None] = POD_CHUNK_SIZES,
                   towers: Sequence[str] = POD_TOWERS, dtype: str = "bfloat16",
                   hbm_gib: float = 16.0, grad_accum_steps: Sequence[int] = (1,),
                   remats: Sequence[str] = ("none",)) -> list[dict[str, Any]]:
  """Compiles the full train step per (mesh, towers, chunk, accumulation, remat); reports per device.

  meshes: (data, fsdp) sizes; each uses the first data × fsdp devices. towers: "both" (both
  trained) and/or "text" (image tower frozen, the paper's setting). text_length: the token length
  bucket of the batch. grad_accum_steps: micro-batches per step (`optim.grad_accum_steps`; more
  than 1 cuts activation memory but gives each micro-batch's softmax fewer negatives). remats:
  `model.remat` policies (`layers.REMAT_POLICIES`: recompute each block in the backward pass
  instead of keeping its activations; negatives unchanged, one more forward of each trained block). Each record:
  `memory` (XLA's analysis, bytes per device, with `total`), `total_gib`, `fits` (total ≤
  hbm_gib), `collectives` (op counts by kind), parameter counts, lowering and compile seconds, and
  the process' peak RSS so far (the host memory compiling took). Runs in a subprocess on forced
  host devices when fewer devices than the largest mesh needs are available.
  """
  if any(t not in POD_TOWERS for t in towers):
    raise ValueError(f"towers must be among {POD_TOWERS}, got {tuple(towers)}")
  num_devices = max(d * f for d, f in meshes)
  if needs_subprocess(num_devices):
    return run_in_subprocess("pod", num_devices, [
        f"--pod_preset={preset}", f"--pod_batch={global_batch}", f"--text_length={text_length}",
        f"--meshes={','.join(f'{d}x{f}' for d, f in meshes)}",
        f"--pod_chunk_sizes={_chunks_arg(chunk_sizes)}", f"--pod_towers={','.join(towers)}",
        f"--pod_dtype={dtype}", f"--hbm_gib={hbm_gib}",
        f"--grad_accum={','.join(str(k) for k in grad_accum_steps)}",
        f"--pod_remat={','.join(remats)}"])
  results = []
  for data, fsdp in meshes:
    mesh = sharding.make_mesh(data, fsdp, devices=_devices(data * fsdp))
    for trained, chunk, accum, remat in itertools.product(towers, chunk_sizes, grad_accum_steps,
                                                          remats):
      config = pod_config(preset, global_batch, data=data, fsdp=fsdp, dtype=dtype,
                          freeze_image=trained == "text", chunk_size=chunk, grad_accum_steps=accum,
                          remat=remat)
      train.validate_config(config, mesh.size)
      _log(f"pod: {preset} B={global_batch} L={text_length} mesh data={data} fsdp={fsdp} "
           f"towers={trained} chunk={chunk} accum={accum} remat={remat} {dtype}: lowering and "
           "compiling")
      compiled, facts = compile_train_step(config, mesh, text_length)
      memory = results_lib.memory_analysis(compiled)
      record = {
          "what": "pod", "preset": preset, "global_batch": global_batch,
          "local_batch": global_batch // mesh.size, "text_length": text_length,
          "mesh": {"data": data, "fsdp": fsdp}, "devices": mesh.size, "dtype": dtype,
          "param_dtype": "float32", "towers": trained, "chunk_size": chunk,
          "grad_accum_steps": accum, "remat": remat, **facts, "memory": memory,
          "total_gib": round(memory.get("total", 0) / GIB, 3), "hbm_gib": hbm_gib,
          "fits": memory.get("total", 0) <= hbm_gib * GIB,
          "collectives": count_collectives(compiled.as_text()),
          "max_rss_gib": round(results_lib.max_rss_bytes() / GIB, 2),
          "backend": jax.default_backend(),
      }
      _log(f"pod: compiled in {facts['compile_s']} s; {record['total_gib']} GiB per device")
      results.append(record)
      del compiled
  return results


# ----------------------------------------------------------------------------------------------
# Tables and the benchmark CLI's interface.
# ----------------------------------------------------------------------------------------------
def _mib(n: int) -> str:
  return f"{n / results_lib.MIB:,.2f}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
  """Human-readable rows for loss_memory and pod records (others are skipped)."""
  lines = []
  losses = [r for r in results if r["what"] == "loss_memory"]
  if losses:
    r = losses[0]
    lines.append(f"loss_memory: SemCLIP value+grad, global batch {r['global_batch']} × "
                 f"{r['dim']} float32, {r['devices']} devices (local batch {r['local_batch']}); "
                 "MiB per device")
    lines.append(f"  {'chunk':>6} {'temp (peak)':>12} {'arguments':>10} {'outputs':>8} "
                 f"{'logits block':>13} {'gathered cols':>14} {'compile s':>10}"
                 + (f" {'loss':>10}" if "loss_value" in r else ""))
    for r in losses:
      m = r["memory"]
      lines.append(f"  {str(r['chunk_size'] or 'none'):>6} {_mib(m['temp_size']):>12} "
                   f"{_mib(m['argument_size']):>10} {_mib(m['output_size']):>8} "
                   f"{_mib(r['logits_bytes']):>13} {_mib(r['gathered_columns_bytes']):>14} "
                   f"{r['compile_s']:>10.1f}"
                   + (f" {r['loss_value']:>10.6f}" if "loss_value" in r else ""))
  pods = [r for r in results if r["what"] == "pod"]
  if pods:
    r = pods[0]
    lines.append(f"pod: {r['preset']} train step, global batch {r['global_batch']}, text length "
                 f"{r['text_length']}, {r['dtype']} compute / float32 params, {r['devices']} "
                 f"devices max; GiB per device (fits = total ≤ {r['hbm_gib']:g} GiB)")
    lines.append(f"  {'mesh':>9} {'towers':>6} {'chunk':>5} {'accum':>5} {'remat':>5} "
                 f"{'args':>6} {'temp':>6} "
                 f"{'out':>6} {'alias':>6} {'total':>6} {'fits':>4}  {'AR':>3} {'AG':>3} "
                 f"{'RS':>3} {'A2A':>3} {'CP':>3} {'compile s':>9} {'RSS GiB':>7}")
    gib = lambda n: f"{n / GIB:6.2f}"
    for r in pods:
      m, c = r["memory"], r["collectives"]
      mesh = f"{r['mesh']['data']}x{r['mesh']['fsdp']}"
      lines.append(f"  {mesh:>9} {r['towers']:>6} {str(r['chunk_size'] or 'none'):>5} "
                   f"{r['grad_accum_steps']:>5} {r['remat']:>5} "
                   f"{gib(m['argument_size'])} {gib(m['temp_size'])} "
                   f"{gib(m['output_size'])} {gib(m['alias_size'])} {gib(m['total'])} "
                   f"{'yes' if r['fits'] else 'NO':>4}  {c['all-reduce']:>3} {c['all-gather']:>3} "
                   f"{c['reduce-scatter']:>3} {c['all-to-all']:>3} {c['collective-permute']:>3} "
                   f"{r['compile_s']:>9.1f} {r['max_rss_gib']:>7.2f}")
    lines.append("  mesh = data x fsdp; towers: both trained, or text only (image frozen); "
                 "accum = micro-batches per step; remat = model.remat policy")
    lines.append("  collectives (ops in the compiled HLO, a loop body's once): AR all-reduce, "
                 "AG all-gather, RS reduce-scatter, A2A all-to-all, CP collective-permute")
  return "\n".join(lines)


def print_table(results: Sequence[dict[str, Any]]) -> None:
  table = format_table(results)
  if table:
    print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of both measurements (most prefixed by theirs: the CLI holds every mode's flags)."""
  parser.add_argument("--loss_batch", type=int, default=4096, help="loss_memory: global batch")
  parser.add_argument("--embed_dim", type=int, default=512, help="loss_memory: embedding dim")
  parser.add_argument("--loss_chunk_sizes", type=_parse_chunks, default=LOSS_CHUNK_SIZES,
                      help="loss_memory: chunk sizes, comma separated, none = unchunked")
  parser.add_argument("--loss_devices", type=int, default=8, help="loss_memory: devices")
  parser.add_argument("--execute", action="store_true",
                      help="loss_memory: also run each program once and report the loss")
  parser.add_argument("--pod_preset", default="B/16", help="pod: model preset")
  parser.add_argument("--pod_batch", type=int, default=32768, help="pod: global batch")
  parser.add_argument("--text_length", type=int, default=32, help="pod: caption length bucket")
  parser.add_argument("--meshes", type=_parse_meshes, default=POD_MESHES,
                      help="pod: data x fsdp meshes, e.g. 256x1,16x16,1x256")
  parser.add_argument("--pod_chunk_sizes", type=_parse_chunks, default=POD_CHUNK_SIZES,
                      help="pod: loss chunk sizes, comma separated, none = unchunked")
  parser.add_argument("--pod_towers", type=lambda s: tuple(s.split(",")), default=POD_TOWERS,
                      help="pod: trained towers, comma separated: both, text (image frozen)")
  parser.add_argument("--pod_dtype", choices=["float32", "bfloat16"], default="bfloat16",
                      help="pod: compute dtype (parameters stay float32)")
  parser.add_argument("--hbm_gib", type=float, default=16.0, help="pod: device memory to fit")
  parser.add_argument("--grad_accum", type=lambda s: tuple(int(k) for k in s.split(",")),
                      default=(1,), help="pod: micro-batches per step, comma separated")
  parser.add_argument("--pod_remat", type=_parse_remats, default=("none",),
                      help="pod: model.remat policies, comma separated: none, full, dots")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Runs `args.what` (loss_memory or pod) with `add_arguments`' flags."""
  if args.what == "loss_memory":
    return loss_memory(args.loss_batch, args.embed_dim, args.loss_chunk_sizes, args.loss_devices,
                       execute=args.execute)
  if args.what == "pod":
    return pod_simulation(args.pod_preset, args.pod_batch, args.text_length, args.meshes,
                          args.pod_chunk_sizes, args.pod_towers, args.pod_dtype, args.hbm_gib,
                          args.grad_accum, args.pod_remat)
  raise ValueError(f"semclip_jax.bench.scale measures loss_memory or pod, not {args.what!r}")
