"""Entry point: `python -m semclip_jax.main --config=configs/shapes.py --workdir=/tmp/run`.

Modes: `train` (default; resumes from `--workdir` when it holds checkpoints), `eval` (runs the
config's evaluators on the latest checkpoint, or on `--config.model.init_from`), `export` (writes
the latest checkpoint as a Hugging Face CLIP folder to `workdir/hf` and an open_clip folder to
`workdir/open_clip`). Override any config field on the command line:
`--config.loss.name=clip --config.data.batch_size=512`.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and exports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): auto = when SLURM, a TPU pod or JAX_COORDINATOR_ADDRESS "
    "says this is one of several processes.")


def _is_multiprocess_environment() -> bool:
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
          or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1)


def main(argv) -> None:
  del argv
  # Our progress at INFO; orbax's and grain's per-save chatter (absl logging) only when it matters.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("semclip_jax").setLevel(logging.INFO)
  if _DISTRIBUTED.value == "yes" or (_DISTRIBUTED.value == "auto" and _is_multiprocess_environment()):
    jax.distributed.initialize()
  logging.info("process %d of %d; %d local of %d devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  from semclip_jax import train  # pylint: disable=import-outside-toplevel

  if _MODE.value == "train":
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == "eval":
    train.evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    train.export(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
