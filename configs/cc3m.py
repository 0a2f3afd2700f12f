"""CC3M-scale SemCLIP training from ArrayRecord shards, sized for a TPU v4/v5 slice or 8 GPUs.

Prepare the shards once (img2dataset WebDataset tars + the LLM triples file); WebDataset tars are
split by the tars given, so the validation and test shards come from tars of their own, prepared
the same way into .../val and .../test:

  python -m semclip_jax.data.prepare --format=webdataset --input=/data/cc3m/{00000..00331}.tar \\
      --triples=/data/cc3m/triples.jsonl --output_dir=gs://bucket/cc3m/train

Launch on a pod slice (see launch/tpu_pod.sh) or a GPU node (launch/gpu_slurm.sh):

  python -m semclip_jax.main --config=configs/cc3m.py --workdir=gs://bucket/runs/cc3m_semclip \\
      --config.data.path=gs://bucket/cc3m/train --config.data.eval_path=gs://bucket/cc3m/val \\
      --config.data.test_path=gs://bucket/cc3m/test
  # FSDP over 4 devices per replica: --config.mesh.fsdp=4; from pretrained: --config.model.init_from=...
  python -m semclip_jax.main --config=configs/cc3m.py:runlocal --workdir=/tmp/cc3m_smoke ...
"""

from semclip_jax import config as config_lib


def get_config(arg: str | None = None):
  c = config_lib.base_config()
  c.model.preset = "B/32"  # from scratch; set model.init_from to fine-tune
  c.model.dtype = "bfloat16"
  # Recompute each block in the backward pass: without it the step needs 64 GiB per device at
  # 512 images per device (18 GiB at 128), with it 8.3 (4.1) GiB, so it fits 16-32 GiB TPU cores
  # (BENCHMARKS.md, pod simulation). On 80 GB GPUs, --config.model.remat=none skips the recompute.
  c.model.remat = "full"
  c.loss.name = "semclip"
  c.loss.chunk_size = 1024  # bound the logits memory of the global-batch contrastive term
  c.optim.learning_rate = 5e-4
  c.optim.weight_decay = 0.2
  c.optim.b2 = 0.98  # CLIP's large-batch setting
  c.optim.eps = 1e-6
  c.optim.warmup_steps = 2000
  c.data.batch_size = 4096  # global; divisible by 8, 16, 32, 64 devices
  c.total_steps = 20_000  # ~27 epochs of CC3M's ~3M triples
  c.data.kind = "array_record"
  c.data.path = ""  # folder of training shards (required)
  c.data.eval_path = ""  # folder of validation shards (required): periodic evals, best checkpoint
  c.data.test_path = ""  # folder of test shards (required; or --config.data.test_split="")
  c.data.worker_count = 4  # per process: with one process per GPU, 8 processes share a node
  c.data.worker_buffer_size = 4
  c.mesh.data, c.mesh.fsdp = -1, 1
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = "val/ccneg/accuracy"
  c.evals.ccneg = dict(type="ccneg", every_steps=2000)
  c.evals.retrieval = dict(type="retrieval", every_steps=2000)
  c.evals.zeroshot = config_lib.zeroshot_with_negated_prompts()
  return config_lib.apply_argument(c, arg)
