"""The embedded default: a tiny CLIP trained from scratch on the built-in shapes dataset.

SemCLIP loss; about 5 minutes on 2 CPU cores, then CC-Neg-style accuracy and retrieval on held-out
colour/shape combinations, printed as a table. Launch:

  python -m semclip_jax.main --config=configs/shapes.py --workdir=/tmp/shapes
  python -m semclip_jax.main --config=configs/shapes.py --workdir=/tmp/shapes_clip --config.loss.name=clip
  python -m semclip_jax.main --config=configs/shapes.py:runlocal --workdir=/tmp/shapes_smoke

`runlocal` shrinks the run to a smoke test of a few steps.
"""

from semclip_jax import config as config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.total_steps = 1200
  c.log_every_steps = 25
  c.model.preset = "tiny"  # 2-layer towers, 32x32 images, 32-d embeddings
  c.loss.name = "semclip"  # clip | paraphrase_only | negation_only | semclip | negclip | siglip | ...
  c.optim.learning_rate = 1e-3  # from scratch: far above the paper's fine-tuning 5e-5
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.data.kind = "shapes"
  c.data.batch_size = 64
  c.data.image_size = 32
  c.data.context_length = 32  # shapes captions are at most ~30 tokens
  c.data.crop_scale = (0.8, 1.0)
  c.data.shapes_render_size = 40
  c.data.worker_count = 1
  c.checkpoint.every_steps = 400
  c.evals.ccneg = dict(type="ccneg")  # at the end only (no every_steps)
  c.evals.retrieval = dict(type="retrieval")
  return config_lib.apply_argument(c, arg)
