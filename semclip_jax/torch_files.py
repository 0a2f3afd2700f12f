"""The one way semclip_jax reads a PyTorch pickle: `torch.load(weights_only=True)`, never an
arbitrary unpickle. Used for open_clip / OpenAI-layout checkpoints (`openclip`) and CoN-CLIP's
CC-Neg release (`data.readers`); torch is imported only when such a file is read. A `gs://` file
is read from a temporary local copy (`storage.local_copy`)."""

from __future__ import annotations

from typing import Any

from semclip_jax import storage


def torch_load(path: str, error: type[Exception] = ValueError) -> Any:
  """The objects in `path` (tensors, dicts, lists, strings, numbers) on the CPU. Raises `error`
  naming the file when torch is missing or when `weights_only` refuses or cannot read it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise error(f"{path}: reading a PyTorch file needs torch (pip install -e '.[torch]'); or "
                "convert it to safetensors first") from e
  try:
    with storage.local_copy(path) as local:  # `path` itself when local
      return torch.load(local, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # UnpicklingError, RuntimeError, ...
    first_line = str(e).splitlines()[0] if str(e) else ""
    raise error(f"{path}: torch.load(weights_only=True) refused or failed to read it (semclip_jax "
                f"never unpickles arbitrary objects): {type(e).__name__}: {first_line}") from e
