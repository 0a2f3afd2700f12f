"""A training run's own config: `--config=workdir:/path/to/run` (or `load_config("workdir:<run>")`).

The config the run saved in `<run>/config.json`, over today's defaults. `--mode=eval`,
`--mode=export` and a resumed training run use it when no `--config` is given, so nothing the run
was trained with has to be repeated; `--config.<field>=<value>` still overrides any field.
"""

from semclip_jax import config as config_lib


def get_config(workdir: str | None = None):
  if not workdir:
    raise ValueError("configs/workdir.py takes the run's folder: --config=workdir:/path/to/run")
  return config_lib.run_config(workdir)
