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

from semclip_jax.data.sources import SUGARCREPE_PP_CSV  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def sugarcrepe_csv() -> pathlib.Path:
  """The vendored SugarCrepe++ triples CSV (shipped with the package, so never skipped)."""
  path = pathlib.Path(SUGARCREPE_PP_CSV)
  assert path.is_file(), f"{path} is missing from the package: reinstall or restore it from git"
  return path
