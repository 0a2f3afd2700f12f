"""The paper's CC-Neg fine-tuning: ViT-B/32 from LAION-2B weights, image tower frozen, SemCLIP.

Data: the CC-Neg triples as a CSV in the paper's layout (`image_number, caption, paraphrased,
negation`; image `{image_number:09d}.jpg`), or ArrayRecord shards converted from the CoN-CLIP
release with `python -m semclip_jax.data.prepare --format=ccneg_pt ... --split=all --ccneg_official
--output_dir=shards` (train with `--config.data.kind=array_record --config.data.path=shards/train
--config.data.eval_path=shards/val --config.data.test_path=shards/test`, the flags its last line
prints). Launch (one GPU or TPU host):

  python -m semclip_jax.main --config=configs/ccneg.py --workdir=/tmp/ccneg \\
      --config.data.path=/data/ccneg/ccneg.csv --config.data.image_dir=/data/ccneg/images
  # the paper's CLIP baseline and ablations: --config.loss.name=clip | paraphrase_only | negation_only
  python -m semclip_jax.main --config=configs/ccneg.py:runlocal --workdir=/tmp/ccneg_smoke ...

Split: the release's (the last 40,000 items are the test split, scored once at the end); the
validation split that chooses the best checkpoint is carved from the rest by image
(`data.ccneg_val_fraction`, `data.split_seed`). `--config.data.ccneg_official=False` splits by image
with `data.ratios` instead; `:paper_compat` uses the official code's seed-42 row split.

Also scored at the end, when their data is given (each is skipped with one line otherwise):
zero-shot with negated prompts (`--config.evals.zeroshot.data_dir=/data/tfds`) and all 4,757
SugarCrepe++ items as a cross-benchmark (`--config.evals.sugarcrepe_pp.data.image_dir=/data/coco/val2017`).
"""

from semclip_jax import config as config_lib


def get_config(arg: str | None = None):
  c = config_lib.paper_finetuning(config_lib.base_config())
  c.total_steps = 1500  # ~4 epochs of the ~188k training triples
  c.data.layout = "ccneg"
  c.data.ccneg_official = True  # test on the release's last 40,000 items, validate on a carve
  c.data.path = ""  # the CC-Neg CSV (required)
  c.data.image_dir = ""  # its images (required)
  c.checkpoint.every_steps = 250
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "val/ccneg/accuracy"
  c.evals.ccneg = dict(type="ccneg", every_steps=250)
  c.evals.retrieval = dict(type="retrieval", every_steps=250)
  c.evals.zeroshot = config_lib.zeroshot_with_negated_prompts()
  c.evals.sugarcrepe_pp = config_lib.sugarcrepe_pp_cross_benchmark()
  return config_lib.apply_argument(c, arg)
