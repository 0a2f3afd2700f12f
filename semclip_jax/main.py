"""Entry point: `python -m semclip_jax.main --config=shapes --workdir=/tmp/run`.

Modes: `train` (default; resumes from `--workdir` when it holds checkpoints), `eval` (runs the
config's evaluators on the latest checkpoint, or on `--config.model.init_from`), `export` (writes
the latest checkpoint as a Hugging Face CLIP folder with its model card to `workdir/hf` and an
open_clip folder to `workdir/open_clip`). `--config` is a config file or the name of one shipped
with the package (`shapes`, `ccneg`, `sugarcrepe_pp`, `cc3m`), with an optional argument
(`shapes:runlocal`); without it, a workdir that holds a run uses that run's own config.json
(`--config=workdir:<workdir>`). Override any config field on the command line:
`--config.loss.name=clip --config.data.batch_size=512` (`--help` lists every field).
`--push_to_hub=<user>/<repo>` uploads workdir/hf to the Hugging Face Hub after training or export.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import traceback
from typing import NoReturn, Sequence

PROG = "python -m semclip_jax.main"
_final_line: list[tuple[str, int]] = []  # why the command failed, and its exit status (run())


def _print_final_line_and_exit() -> None:
  """At exit, after every other exit handler: the failure's reason as the output's last line.
  Then exits at once: the interpreter's teardown would print orbax's unfinished asynchronous
  writes (a save that failed on a full disk) as hundreds of lines of "Exception ignored"."""
  if _final_line:
    line, status = _final_line[-1]
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(status)  # pylint: disable=protected-access


# Exit handlers run last-registered first: registered before jax, orbax and grain are imported
# (and register theirs: JAX's distributed shutdown, grain's shared memory release), this one runs
# after them.
atexit.register(_print_final_line_and_exit)

import jax  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from absl import logging as absl_logging  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from semclip_jax import config as config_lib  # pylint: disable=wrong-import-position
from semclip_jax import storage  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file or packaged config name, with an optional ':argument' "
    "(shapes, shapes:runlocal, configs/ccneg.py:paper_compat, workdir:<run folder>). Without "
    "it, the workdir's own config.json. Fields, overridable as --config.<field>=<value>, with "
    "their defaults (config files change some):\n" + config_lib.describe_fields(),
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and exports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "export"], "What to do.")
_PUSH_TO_HUB = flags.DEFINE_string(
    "push_to_hub", None, "A Hugging Face Hub repo id (<user>/<name>): upload workdir/hf there "
    "after training or export (token: HF_TOKEN or `hf auth login`).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): auto = when SLURM, a TPU pod or JAX_COORDINATOR_ADDRESS "
    "says this is one of several processes.")


def _is_multiprocess_environment() -> bool:
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
          or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1)


def initialize_distributed() -> None:
  """jax.distributed.initialize(), with the process count and this process's index from
  JAX_NUM_PROCESSES and JAX_PROCESS_ID when set: JAX itself reads only JAX_COORDINATOR_ADDRESS,
  and takes the rest from a cluster it detects (SLURM, a TPU pod, Open MPI, Kubernetes). Also
  starts JAX's preemption notifier: a SIGTERM to any process stops all at one step (preemption)."""
  env, kwargs = os.environ, {}
  if env.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if env.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)


def _flag_value(argv: Sequence[str], name: str) -> tuple[int, str | None]:
  """(index, value) of `--name=value` or `--name value` in argv; (-1, None) when absent."""
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf"--?{name}(=(.*))?", arg)
    if match:
      value = match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
      return i, value
  return -1, None


def resolve_config_flag(argv: Sequence[str]) -> list[str]:
  """argv with `--config` naming a file: a packaged name becomes its file, and a missing
  `--config` becomes the workdir's own (`configs/workdir.py:<workdir>`) when it holds a run."""
  argv = list(argv)
  index, value = _flag_value(argv, "config")
  if index >= 0 and value:
    path, colon, argument = value.partition(":")
    resolved = config_lib.config_file(path) + colon + argument
    argv[index:index + (1 if "=" in argv[index] else 2)] = [f"--config={resolved}"]
    return argv
  if index < 0:
    _, workdir = _flag_value(argv, "workdir")
    if (workdir and storage.scheme(workdir) in ("", *storage.REMOTE_SCHEMES)
        and storage.isfile(storage.join(workdir, config_lib.RUN_CONFIG_FILE))):
      # Before every --config.<field> override: config_flags requires that order.
      argv.insert(1, f"--config={config_lib.config_file('workdir')}:{workdir}")
  return argv


def main(argv) -> None:
  del argv
  # Our progress at INFO; orbax's and grain's per-save chatter (absl logging) only when it matters.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("semclip_jax").setLevel(logging.INFO)
  try:  # before anything is created: never a local folder named "gs:" or "s3:"
    storage.check(_WORKDIR.value or "", "--workdir")
  except storage.UnsupportedPathError as e:
    sys.exit(f"{PROG}: error: {e}")
  if _CONFIG.value is None:
    raise app.UsageError("give --config (a config file or name, e.g. --config=shapes), or a "
                         "--workdir that holds a run's config.json")
  if _DISTRIBUTED.value == "yes" or (_DISTRIBUTED.value == "auto" and _is_multiprocess_environment()):
    initialize_distributed()
  logging.info("process %d of %d; %d local of %d devices: %s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.local_devices())
  # pylint: disable=import-outside-toplevel
  from semclip_jax import model_card, run_lock, train, train_step
  from semclip_jax.data import input_pipeline

  run_mode = {"train": train.train_and_evaluate, "eval": train.evaluate, "export": train.export}
  try:
    run_mode[_MODE.value](_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, train.RestoreError, run_lock.WorkdirLockedError,
          input_pipeline.BadDataError, train_step.NonFiniteLossError, FileNotFoundError) as e:
    # What the user can fix (a config value, a missing file, checkpoints that do not restore,
    # data past max_bad_fraction, a diverged run): the reason as the log's last line, not under a
    # traceback.
    sys.exit(f"{PROG}: error: {e}")
  if _PUSH_TO_HUB.value and _MODE.value != "eval" and jax.process_index() == 0:
    try:
      url = train.push_to_hub(_CONFIG.value, _WORKDIR.value, _PUSH_TO_HUB.value)
    except (ValueError, model_card.PushToHubError) as e:  # one line, not a traceback
      sys.exit(f"{PROG}: error: --push_to_hub: {e}")
    logging.info("pushed %s to %s", storage.join(_WORKDIR.value, "hf"), url)


def failure_line(error: BaseException, mode: str = "train") -> str:
  """The one line that ends the output of a command that failed with `error`."""
  if isinstance(error, SystemExit):  # sys.exit("<prog>: error: ...") above: the line itself
    return str(error.code)
  if isinstance(error, KeyboardInterrupt):
    return f"{PROG}: error: interrupted (before training started or after it stopped)"
  out_of_space = storage.out_of_space(error)
  if out_of_space:
    resume = (" and rerun the same command: training resumes from its last complete checkpoint"
              if mode == "train" else " and rerun the same command")
    return (f"{PROG}: error: {out_of_space}: free space there (or raise the quota or file size "
            f"limit){resume}")
  text = str(error).strip().splitlines()
  return (f"{PROG}: error: unexpected {type(error).__name__}"
          + (f": {text[0][:500]}" if text else "") + " (its traceback is above)")


def run() -> None:
  """The command line: main() under absl, every failure ending in one line (`failure_line`)."""
  flags.mark_flags_as_required(["workdir"])
  try:
    sys.argv = resolve_config_flag(sys.argv)  # config_flags reads the overrides from sys.argv
    app.run(main, argv=sys.argv, flags_parser=_parse_flags)
  except SystemExit as e:
    if not isinstance(e.code, str):  # success, --help, or absl's own usage errors (printed)
      raise
    _exit_with(failure_line(e), 1)
  except FileNotFoundError as e:  # resolve_config_flag: no such config file
    _exit_with(f"{PROG}: error: {e}", 1)
  except BaseException as e:  # pylint: disable=broad-exception-caught
    if not storage.out_of_space(e) and not isinstance(e, KeyboardInterrupt):
      traceback.print_exc()  # a bug, most likely: the trace to report it with
    mode = _MODE.value if flags.FLAGS.is_parsed() else "train"
    _exit_with(failure_line(e, mode), 130 if isinstance(e, KeyboardInterrupt) else 1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag (or --config.<field> value) being the one failure line
  instead of absl's "FATAL Flags parsing error" followed by a hint."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"{PROG}: error: {' '.join(str(e).split())} (--help lists every flag and "
                     "config field)") from None
  except (AttributeError, KeyError) as e:  # config_flags' own answer to an unknown field
    field = str(e).strip("\"'")
    named = [arg.split("=")[0] for arg in argv
             if arg.startswith("--config.") and field in arg.split("=")[0].split(".")]
    if not named:  # not an override's: a config file's own error
      raise
    raise SystemExit(f"{PROG}: error: {named[0]} names no config field ({field!r} is none; "
                     "--help lists every field)") from None


def _exit_with(line: str, status: int) -> NoReturn:
  """Exits with `status`, `line` printed after everything else (`_print_final_line_and_exit`)."""
  _final_line.append((line, status))
  raise SystemExit(status) from None


if __name__ == "__main__":
  run()
