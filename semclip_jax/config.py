"""The trainer's config: every field with its default, the paper's recipe, and config arguments.

Config files (`configs/*.py`) build on `base_config()` and end with `apply_argument(c, arg)`, so
`--config=configs/<name>.py:runlocal` means the same everywhere. This module imports only the
default configs of the parts it describes (loss, optimizer, data), never the trainer, the
evaluators, checkpointing or Hugging Face code: reading a config stays cheap.
"""

from __future__ import annotations

import ml_collections

from semclip_jax import data as data_lib
from semclip_jax import objective, optim

ARGUMENTS = ("runlocal",)  # what may follow `:` in --config=configs/<name>.py:<argument>
# The paper freezes the image tower: every parameter under model.vision.
FREEZE_IMAGE_TOWER = (r"^model\.vision\.",)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model initialisation seed
  c.total_steps = 1000  # optimizer updates
  c.log_every_steps = 10  # metrics to JSONL / TensorBoard / progress bar
  c.max_consecutive_skips = 10  # non-finite steps in a row before training stops
  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # tiny | B/32 | B/16 | L/14 (ignored when init_from is set)
  c.model.init_from = ""  # a Hugging Face CLIP folder or hub id to start from
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.remat = "none"  # backward recomputation per block: none | full | dots (layers.py)
  c.loss = objective.default_config()
  c.optim = optim.default_config()
  c.data = data_lib.default_config()
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # devices on the data axis (−1: all that fsdp leaves)
  c.mesh.fsdp = 1  # devices parameters are split over
  c.mesh.rules = ()  # (regex, spec) partition rules before the FSDP default
  c.mesh.num_devices = -1  # use the first N devices only (−1: all)
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500  # also saved at the end and on SIGTERM
  c.checkpoint.keep = 3  # most recent checkpoints kept
  c.checkpoint.keep_best = 0  # best checkpoints kept by best_metric
  c.checkpoint.best_metric = ""  # e.g. "ccneg/accuracy"
  c.checkpoint.best_mode = "max"
  c.checkpoint.async_save = True
  c.evals = ml_collections.ConfigDict()  # name -> {type, every_steps, data: overrides}
  c.export_hf = True  # write workdir/hf at the end
  c.progress_bar = True
  return c


def paper_finetuning(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The SemCLIP paper's fine-tuning recipe (DESIGN.md section 1), shared by its two settings:
  ViT-B/32 from LAION-2B weights, image tower frozen, AdamW lr 5e-5, weight decay 0.2, betas
  (0.9, 0.999), 50 warmup steps then cosine to 0, clipping at 1.0, 2 × 256 batch, bf16."""
  c.model.update(init_from="laion/CLIP-ViT-B-32-laion2B-s34B-b79K", dtype="bfloat16")
  c.loss.name = "semclip"
  c.optim.update(learning_rate=5e-5, weight_decay=0.2, b1=0.9, b2=0.999, warmup_steps=50,
                 schedule="cosine", grad_clip_norm=1.0, freeze=FREEZE_IMAGE_TOWER,
                 grad_accum_steps=2)
  c.data.update(batch_size=512, kind="csv", eval_split="test", worker_count=8)
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `runlocal` config argument: the same run, tiny and short, for a CPU smoke test."""
  c.total_steps, c.log_every_steps = 12, 4
  c.model.update(preset="tiny", init_from="", dtype="float32")
  c.optim.update(grad_accum_steps=1, warmup_steps=2, freeze=())
  c.data.update(batch_size=16, image_size=32, worker_count=0, shapes_eval_size=64)
  c.checkpoint.update(every_steps=8, keep_best=0, best_metric="")
  c.mesh.update(data=-1, fsdp=1)
  for eval_config in c.evals.values():
    eval_config.every_steps = 0
  return c


def apply_argument(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies a config file's argument (`None` or one of `ARGUMENTS`) to `c` and returns it."""
  if arg == "runlocal":
    return shrink_for_cpu(c)
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; use one of {list(ARGUMENTS)} or nothing")
  return c
