"""The metrics writer's process cost: TensorBoard events without importing torch."""

import subprocess
import sys

_WRITE = """
import sys
from semclip_jax.metrics_writer import MetricsWriter
writer = MetricsWriter(sys.argv[1])
writer.write(1, {"loss": 0.5})
writer.close()
assert "torch" not in sys.modules, "tensorboardX imported torch"
import torch  # still importable afterwards
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  # torch is installed here (the test extra), and tensorboardX would import it: 2-3 s at the
  # start of every run for tensors we never log.
  done = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path)], capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "metrics.jsonl").read_text().count('"loss": 0.5') == 1
