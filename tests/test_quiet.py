"""What the commands print besides their results: no PyTorch advisory from transformers when torch
is absent (the default install), no shared memory left to Python's resource tracker by the grain
worker processes, and benchmark `--help` that states the flags' defaults.

The first two run in a fresh interpreter, as a user's command does: both messages are printed by
one process as it starts or exits.
"""

import os
import subprocess
import sys

from semclip_jax.bench import __main__ as bench_main

TORCH_ADVISORY = "PyTorch was not found"
LEAK_WARNING = "leaked shared_memory"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items() if k not in env}
  environ.update({k: v for k, v in env.items() if v is not None})
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env=environ)
  assert done.returncode == 0, done.stderr
  return done


def test_no_pytorch_advisory_when_torch_is_missing():
  # torch is installed here (the test extra); None in sys.modules makes `import torch` fail and
  # find_spec("torch") return None, which is how transformers decides it is absent. The variable
  # that semclip_jax sets is dropped from the child's environment: this process imported
  # semclip_jax already, and the child must set it itself.
  done = run_python(
      "import sys\n"
      "sys.modules['torch'] = None\n"
      "import semclip_jax.hf, semclip_jax.data.tokenizer\n"
      "import transformers\n"
      "from transformers.utils import logging\n"
      "assert not transformers.is_torch_available()\n"
      "print(logging.get_verbosity())\n"
      "logging.get_logger('transformers.probe').warning('other warnings still show')\n",
      TRANSFORMERS_NO_ADVISORY_WARNINGS=None)
  assert TORCH_ADVISORY not in done.stderr, done.stderr
  assert done.stdout.split() == ["30"]  # transformers' verbosity is still WARNING
  assert "other warnings still show" in done.stderr


def test_worker_pipeline_leaves_no_shared_memory_to_the_resource_tracker():
  # Batches from grain's worker processes live in shared memory. Two kinds were left for the
  # resource tracker to report at exit: unlinks grain had queued but not yet run, and batches
  # handed to jax, which the XLA CPU client keeps (it does not copy them) until jax's own exit
  # handler, as it keeps the train step's inputs. Like a command, the pipeline and its batches
  # live in a function, not in module globals.
  done = run_python(
      "import jax\n"
      "from semclip_jax.data import input_pipeline\n"
      "from semclip_jax.data.shapes import ShapesSource\n"
      "def run():\n"
      "  config = input_pipeline.default_config()\n"
      "  config.update(batch_size=8, image_size=16, context_length=16, worker_count=2,\n"
      "                worker_buffer_size=1)\n"
      "  pipeline = input_pipeline.make_pipeline(ShapesSource(size=64, image_size=24), config,\n"
      "                                          train=True, process_index=0, process_count=1)\n"
      "  try:\n"
      "    shapes = [jax.device_put(next(pipeline)['image']).shape for _ in range(3)]\n"
      "  finally:\n"
      "    pipeline.close()\n"
      "  return shapes\n"
      "print(*run())\n")
  assert done.stdout.split() == ["(8,", "16,", "16,", "3)"] * 3
  assert LEAK_WARNING not in done.stderr, done.stderr


def test_benchmark_help_shows_the_defaults_and_the_docstring_as_written(monkeypatch):
  # `bench.peers` builds its parser with the same formatter (semclip_jax.progress.HelpFormatter,
  # also evaluate's and prepare's); importing it loads open_clip and torch when present (seconds),
  # so this reads the main command's help only.
  monkeypatch.setenv("COLUMNS", "1000")  # argparse's width: no long default broken mid-path
  parser = bench_main.make_parser()
  text = parser.format_help()
  assert parser.description.strip() in text  # paragraphs and tables keep their line breaks
  flat = " ".join(text.split())
  valued = [a for a in parser._actions if a.option_strings and a.nargs != 0
            and a.default not in (None, "")]
  assert len(valued) > 30
  for action in valued:  # each with a help text, else argparse shows no default either
    assert action.help, action.dest
    words = " ".join(action.help.replace("%%", "%").split())  # as argparse prints it
    assert f"{words} (default: {action.default})" in flat, action.dest
  assert "images per step, each with its 3 captions (all devices together) (default: 32)" in flat
  # A help that says in words what its unset (None) default means keeps its words alone.
  assert "logits chunk (default: none) --remat" in flat
