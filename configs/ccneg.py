"""The paper's CC-Neg fine-tuning: ViT-B/32 from LAION-2B weights, image tower frozen, SemCLIP.

Data: the CC-Neg triples as a CSV in the paper's layout (`image_number, caption, paraphrased,
negation`; image `{image_number:09d}.jpg`), or converted from the CoN-CLIP release with
`python -m semclip_jax.data.prepare --format=ccneg_pt`. Launch (one GPU or TPU host):

  python -m semclip_jax.main --config=configs/ccneg.py --workdir=/tmp/ccneg \\
      --config.data.path=/data/ccneg/ccneg.csv --config.data.image_dir=/data/ccneg/images
  # the paper's CLIP baseline and ablations: --config.loss.name=clip | paraphrase_only | negation_only
  python -m semclip_jax.main --config=configs/ccneg.py:runlocal --workdir=/tmp/ccneg_smoke ...

Split: by image with seed (CC-Neg has one caption triple per image); `--config.data.ccneg_official=True`
uses the release's split (the last 40,000 items evaluate).
"""

from semclip_jax.train import base_config, shrink_for_cpu


def get_config(arg: str | None = None):
  c = base_config()
  # Paper training defaults (DESIGN.md section 1).
  c.model.init_from = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # ViT-B/32, LAION-2B (gelu)
  c.model.dtype = "bfloat16"
  c.loss.name = "semclip"
  c.optim.learning_rate = 5e-5
  c.optim.weight_decay = 0.2
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.warmup_steps = 50
  c.optim.schedule = "cosine"
  c.optim.grad_clip_norm = 1.0
  c.optim.freeze = (r"^model\.vision\.",)  # the paper freezes the image tower
  c.optim.grad_accum_steps = 2  # 2 micro-batches of 256
  c.data.batch_size = 512
  c.total_steps = 1500  # ~4 epochs of the ~188k training triples
  c.data.kind = "csv"
  c.data.layout = "ccneg"
  c.data.path = ""  # the CC-Neg CSV (required)
  c.data.image_dir = ""  # its images (required)
  c.data.eval_split = "test"
  c.data.worker_count = 8
  c.checkpoint.every_steps = 250
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "ccneg/accuracy"
  c.evals.ccneg = dict(type="ccneg", every_steps=250)
  c.evals.retrieval = dict(type="retrieval", every_steps=250)
  if arg == "runlocal":
    shrink_for_cpu(c)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return c
