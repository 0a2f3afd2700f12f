"""The paper's CC-Neg fine-tuning: ViT-B/32 from LAION-2B weights, image tower frozen, SemCLIP.

Data: the CC-Neg triples as a CSV in the paper's layout (`image_number, caption, paraphrased,
negation`; image `{image_number:09d}.jpg`), or converted from the CoN-CLIP release with
`python -m semclip_jax.data.prepare --format=ccneg_pt`. Launch (one GPU or TPU host):

  python -m semclip_jax.main --config=configs/ccneg.py --workdir=/tmp/ccneg \\
      --config.data.path=/data/ccneg/ccneg.csv --config.data.image_dir=/data/ccneg/images
  # the paper's CLIP baseline and ablations: --config.loss.name=clip | paraphrase_only | negation_only
  python -m semclip_jax.main --config=configs/ccneg.py:runlocal --workdir=/tmp/ccneg_smoke ...

Split: the release's (the last 40,000 items evaluate, the rest train);
`--config.data.ccneg_official=False` splits by image with `data.ratios` and `data.split_seed` instead.
"""

from semclip_jax import config as config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_finetuning(config_lib.base_config())
  c.total_steps = 1500  # ~4 epochs of the ~188k training triples
  c.data.layout = "ccneg"
  c.data.ccneg_official = True  # evaluate on the release's last 40,000 items, train on the rest
  c.data.path = ""  # the CC-Neg CSV (required)
  c.data.image_dir = ""  # its images (required)
  c.checkpoint.every_steps = 250
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "ccneg/accuracy"
  c.evals.ccneg = dict(type="ccneg", every_steps=250)
  c.evals.retrieval = dict(type="retrieval", every_steps=250)
  return config_lib.apply_argument(c, arg)
