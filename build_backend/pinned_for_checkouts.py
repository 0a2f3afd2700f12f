"""setuptools' PEP 517 backend with one difference: an editable install pins its dependencies.

A checkout is installed editable (`pip install -e .`: the README's quickstart and test lines, CI,
the launch scripts, the notebook): it gets requirements.txt's exact pins, the versions CI tests.
A wheel or sdist (`pip install git+<url>`, a dependency of another project) gets setup.cfg's
compatible ranges. setup.py reads the choice from SEMCLIP_JAX_PINNED, set here around the
editable hooks only.
"""

import functools
import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every hook, as setuptools defines it)

PINNED = "SEMCLIP_JAX_PINNED"


def _pinned(hook):
  @functools.wraps(hook)
  def with_pins(*args, **kwargs):
    previous = os.environ.get(PINNED)
    os.environ[PINNED] = "1"
    try:
      return hook(*args, **kwargs)
    finally:
      if previous is None:
        del os.environ[PINNED]
      else:
        os.environ[PINNED] = previous
  return with_pins


get_requires_for_build_editable = _pinned(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_editable = _pinned(_setuptools.prepare_metadata_for_build_editable)
build_editable = _pinned(_setuptools.build_editable)
