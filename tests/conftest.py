"""Test session setup: 8 host CPU devices for real meshes, and no network for model hubs."""

import os

# Must be set before jax is first imported anywhere in the session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build what they need; any attempt to reach a model hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pathlib  # pylint: disable=wrong-import-position

import pytest  # pylint: disable=wrong-import-position

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SUGARCREPE_CSV = SHARED_DATA / "sugarcrepe_pp_paraphrased.csv"


@pytest.fixture(scope="session")
def sugarcrepe_csv() -> pathlib.Path:
  if not SUGARCREPE_CSV.is_file():
    pytest.skip(f"{SUGARCREPE_CSV} not found: the shared data folder is not beside this checkout")
  return SUGARCREPE_CSV
