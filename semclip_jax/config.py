"""The trainer's config: every field with its default, the paper's recipe, and config arguments.

Config files (`configs/*.py`) build on `base_config()` and end with `apply_argument(c, arg)`, so
`--config=configs/<name>.py:runlocal` (and `:paper_compat`, or both: `:paper_compat,runlocal`)
means the same everywhere. This module imports only the
default configs of the parts it describes (loss, optimizer, data), never the trainer, the
evaluators, checkpointing or Hugging Face code: reading a config stays cheap.
"""

from __future__ import annotations

import ml_collections

from semclip_jax import data as data_lib
from semclip_jax import objective, optim

# What may follow `:` in --config=configs/<name>.py:<argument>, comma-separated, applied in order.
ARGUMENTS = ("paper_compat", "runlocal")
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
  # A pretrained CLIP to start from: a Hugging Face folder or hub id, or an open_clip / OpenAI-
  # layout checkpoint (.safetensors/.pt/.pth/.bin/.ckpt, or an open_clip folder).
  c.model.init_from = ""
  # For an open_clip / OpenAI-layout init_from: its architecture, an open_clip name (ViT-B-32,
  # ViT-B-32-quickgelu, ViT-B-16, ViT-L-14, ...) or model-config JSON; "" = the folder's
  # open_clip_config.json, else inferred from the tensor shapes (OpenAI's rule, quick_gelu).
  c.model.init_arch = ""
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
  # A validation metric, "val/<eval>/<metric>" (e.g. "val/ccneg/accuracy"); the test split never
  # selects (train.validate_config refuses it).
  c.checkpoint.best_metric = ""
  c.checkpoint.best_mode = "max"
  c.checkpoint.async_save = True
  # name -> {type, every_steps, data: overrides, ks, split}. Each evaluator scores the validation
  # split (data.eval_split) every `every_steps` and at the end, and the test split (data.test_split)
  # once at the end; results are "val/<name>/<metric>" and "test/<name>/<metric>". One with its
  # own `split` (e.g. "all": a cross-benchmark) or of type zeroshot reads data of its own: it is
  # test data, scored once at the end, and skipped with one line while its data is not set.
  c.evals = ml_collections.ConfigDict()
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
  c.data.update(batch_size=512, kind="csv", worker_count=8)
  return c


def paper_compat(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `paper_compat` config argument: the official code's whole recipe (aaai26-paper12649/
  SemCLIP), for like-for-like comparison with the paper's numbers. Each part is a field of its
  own, so any one can be switched back (e.g. `--config.data.split_by=image`):
  its contrastive term and temperature (`loss.paper_compat`), weight decay on every trainable
  tensor (`optim.decay_all`), 224×224 squash + ImageNet mean/std for training and evaluation
  (`data.resize`, `data.normalization`) from fully decoded images (`data.jpeg_draft` off), the seed-42 random row split, for CC-Neg too
  (`data.split_by`, `data.split_seed`, `data.ccneg_official`; it leaks images between splits),
  and the official metrics (`evals.official`: per-row top-1/3/5 and the combined score;
  retrieval at k = 1, 3, 5). DESIGN.md decision 14 lists what it cannot reproduce."""
  c.loss.paper_compat = True
  c.optim.decay_all = True
  c.data.update(resize="squash", normalization="imagenet", split_by="rows", split_seed=42,
                ccneg_official=False, jpeg_draft=False)
  if c.data.kind != "shapes":  # the official metrics need triples of the run's own data
    c.evals.official = dict(type="official", every_steps=_first_every_steps(c), ks=(1, 3, 5))
  for eval_config in c.evals.values():
    if eval_config.type == "retrieval":
      eval_config.ks = (1, 3, 5)
  return c


def _first_every_steps(c: ml_collections.ConfigDict) -> int:
  return next((e.get("every_steps", 0) for e in c.evals.values() if e.get("every_steps")), 0)


def zeroshot_with_negated_prompts() -> dict:
  """The paper's zero-shot robustness test (CIFAR-10/100, Flowers-102, Food-101, Oxford-IIIT Pets
  with "this is a photo of a {}" and "this is not a photo of a {}"): skipped with one line until
  `--config.evals.zeroshot.data_dir` names the TFDS folder holding them."""
  return dict(type="zeroshot", data_dir="")


def sugarcrepe_pp_cross_benchmark() -> dict:
  """All 4,757 SugarCrepe++ items (the CSV ships with the package) as test data for a model
  trained on other data: skipped with one line until
  `--config.evals.sugarcrepe_pp.data.image_dir` names the COCO val2017 images."""
  return dict(type="sugarcrepe_pp", split="all",
              data=dict(kind="csv", path=data_lib.sources.SUGARCREPE_PP_CSV, image_dir="",
                        layout="sugarcrepe_pp"))


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
  """Applies a config file's argument (`None`, or `ARGUMENTS` joined by commas) to `c`, in
  order, and returns it."""
  apply = {"paper_compat": paper_compat, "runlocal": shrink_for_cpu}
  for name in (arg or "").split(","):
    if name not in apply and name:
      raise ValueError(f"unknown config argument {name!r}; use one or more of {list(ARGUMENTS)} "
                       "(comma-separated) or nothing")
    if name:
      c = apply[name](c)
  return c
