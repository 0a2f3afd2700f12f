"""The paper's SugarCrepe++ fine-tuning: ViT-B/32 from LAION-2B weights, image tower frozen, SemCLIP.

Data: the SugarCrepe++ CSV in the paper's layout (`filename, caption, paraphrased, negation`; the
file the official code ships) over COCO val2017 images. Split by *image* into train/val/test (the
official code's row split leaks images between train and test; `:paper_compat` uses it); the best
checkpoint is chosen on val, the test split is scored once at the end, with zero-shot with negated
prompts when `--config.evals.zeroshot.data_dir` names its TFDS folder. Launch:

  python -m semclip_jax.main --config=configs/sugarcrepe_pp.py --workdir=/tmp/scpp \\
      --config.data.path=data/sugarcrepe_pp_paraphrased.csv --config.data.image_dir=/data/coco/val2017
  python -m semclip_jax.main --config=configs/sugarcrepe_pp.py:runlocal --workdir=/tmp/scpp_smoke ...
"""

from semclip_jax import config as config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_finetuning(config_lib.base_config())
  c.total_steps = 150  # ~20 epochs of the ~3.8k training triples
  c.data.layout = "sugarcrepe_pp"
  c.data.path = ""  # the SugarCrepe++ CSV (required)
  c.data.image_dir = ""  # COCO val2017 (required)
  c.data.ratios = (0.8, 0.1, 0.1)
  c.checkpoint.every_steps = 50
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "val/ccneg/accuracy"
  c.evals.ccneg = dict(type="ccneg", every_steps=50)  # image-original vs image-negative
  c.evals.retrieval = dict(type="retrieval", every_steps=50)
  c.evals.sugarcrepe_pp = dict(type="sugarcrepe_pp", every_steps=50)  # ITT/TOT per subset
  c.evals.zeroshot = config_lib.zeroshot_with_negated_prompts()
  return config_lib.apply_argument(c, arg)
