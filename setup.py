"""Everything is in setup.cfg but this choice: an editable install (a checkout) depends on
requirements.txt's exact pins, a wheel on setup.cfg's ranges (build_backend/pinned_for_checkouts.py
sets SEMCLIP_JAX_PINNED around the editable hooks)."""

import os

import setuptools


def _pins() -> list[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  with open(os.path.join(here, "requirements.txt"), encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


setuptools.setup(**({"install_requires": _pins()} if os.environ.get("SEMCLIP_JAX_PINNED") else {}))
