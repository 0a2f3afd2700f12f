"""Images and captions in, embeddings out, prepared exactly as the evaluation prepares them.

For notebooks and scripts:

  from semclip_jax import config, inference, train
  trained = train.train_and_evaluate(config.load_config("shapes:runlocal"), "/tmp/run")
  images = inference.embed_images(trained.model, ["cat.jpg", "dog.png"])      # [2, D]
  texts = inference.embed_texts(trained.model, ["a cat", "not a cat"])        # [2, D]
  similarity = images @ texts.T                                              # cosines

`pixels` is the evaluation's image path (the record's decode, `data.resize` to
`data.image_size`, `data.normalization`), so an embedding here equals the one the evaluators
score; the towers run jitted (`evaluators.embed.Encoder`), once per batch shape.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import ml_collections
import numpy as np
from PIL import Image

from semclip_jax import data as data_lib
from semclip_jax import storage
from semclip_jax.data.input_pipeline import Preprocess
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.data.transforms import normalize
from semclip_jax.evaluators.embed import Encoder
from semclip_jax.models.clip import CLIP

# A file path (local or gs://), encoded bytes, a PIL image or a uint8 [H, W, 3] array.
ImageLike = Any


def _encoded(image: ImageLike, index: int) -> bytes | np.ndarray:
  """What `Preprocess.pixels` reads: encoded bytes or a uint8 pixel array."""
  if isinstance(image, (str, os.PathLike)):
    try:
      return storage.read_bytes(image)  # a local path or gs://
    except OSError as e:
      raise ValueError(f"image {index} ({image}): {e.strerror or e}") from None
  if isinstance(image, Image.Image):
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")  # lossless: the pixels as given
    return buffer.getvalue()
  if isinstance(image, np.ndarray):
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"image {index}: a pixel array must be uint8 [H, W, 3], got {image.dtype} "
                       f"{list(image.shape)}")
    return image
  if isinstance(image, bytes):
    return image
  raise ValueError(f"image {index}: a path, bytes, a PIL image or a uint8 array, not "
                   f"{type(image).__name__}")


def pixels(images: Sequence[ImageLike], data: ml_collections.ConfigDict | None = None, *,
           image_size: int | None = None) -> np.ndarray:
  """float32 [N, S, S, 3]: `images` as the evaluation feeds them to the image tower (centre crop or
  squash per `data.resize`, normalised per `data.normalization`; `data` defaults to
  `data.default_config()`, S to `image_size` or `data.image_size`). An image that cannot be read
  or decoded is a ValueError naming its index."""
  data = data or data_lib.default_config()
  preprocess = Preprocess(None, image_size or data.image_size, data.context_length, "center",
                          (1.0, 1.0), resize=data.resize, max_image_pixels=data.max_image_pixels)
  out = []
  for index, image in enumerate(images):
    uint8, error = preprocess.pixels({"image": _encoded(image, index)})
    if error is not None:
      raise ValueError(f"image {index}{f' ({image})' if isinstance(image, str) else ''}: {error}")
    out.append(uint8)
  size = preprocess.image_size
  return normalize(np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8),
                   data.normalization)


def embed_images(model: CLIP, images: Sequence[ImageLike],
                 data: ml_collections.ConfigDict | None = None, *, batch_size: int = 32
                 ) -> np.ndarray:
  """float32 [N, D]: L2-normalised image embeddings of `images` (see `pixels`), at the model's
  input size."""
  batches = pixels(images, data, image_size=model.config.vision.image_size)
  encoder, params = Encoder.of(model)
  return _batched(lambda x: encoder.images(params, x), batches, batch_size)


def embed_texts(model: CLIP, texts: Sequence[str], *, tokenizer: CLIPTokenizer | None = None,
                batch_size: int = 256) -> np.ndarray:
  """float32 [N, D]: L2-normalised text embeddings of `texts`, tokenized as the evaluation does
  (OpenAI's BPE and caption cleaning; the model's context length)."""
  tokenizer = tokenizer or CLIPTokenizer()
  tokens = tokenizer(list(texts), context_length=model.config.text.max_position_embeddings)
  encoder, params = Encoder.of(model)
  return _batched(lambda x: encoder.texts(params, x), tokens, batch_size)


def _batched(encode, inputs: np.ndarray, batch_size: int) -> np.ndarray:
  """`encode` over `inputs` in batches padded to `batch_size` (one compiled shape)."""
  batch_size = max(1, min(batch_size, len(inputs)))
  outputs = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
    outputs.append(np.asarray(encode(padded))[:len(chunk)])
  return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
