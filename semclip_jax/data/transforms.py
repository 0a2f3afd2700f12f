"""Image transforms shared by training, evaluation and export: decode, CLIP's eval resize and
centre crop, the training crop box, and CLIP normalisation (uint8 HWC in, float32 HWC out)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

# OpenAI CLIP's normalisation (not ImageNet's): what every CLIP checkpoint was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pil(image: Any) -> Image.Image:
  if isinstance(image, np.ndarray):
    return Image.fromarray(image.astype(np.uint8)).convert("RGB")
  pil = Image.open(io.BytesIO(image))
  pil.load()  # decode now: a truncated file raises here, not later
  return pil.convert("RGB")


def resize_shortest_and_center_crop(pil: Image.Image, size: int) -> np.ndarray:
  """CLIP's eval transform, as CLIPImageProcessor: bicubic resize of the shortest side to `size`
  (long side int(size·long/short)), then the central size × size crop. uint8 HWC out."""
  width, height = pil.size
  short, long = min(width, height), max(width, height)
  new_long = int(size * long / short)
  new_w, new_h = (size, new_long) if width <= height else (new_long, size)
  pixels = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return pixels[top:top + size, left:left + size]


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio=(3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """Inception-style crop: area fraction in `scale`, log-uniform aspect ratio, clipped to fit."""
  area = width * height * rng.uniform(*scale)
  aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
  w = int(round(min(width, np.sqrt(area * aspect))))
  h = int(round(min(height, np.sqrt(area / aspect))))
  left = int(rng.integers(0, width - w + 1))
  top = int(rng.integers(0, height - h + 1))
  return left, top, left + max(w, 1), top + max(h, 1)


def normalize(pixels: np.ndarray) -> np.ndarray:
  """uint8 HWC -> float32 with CLIP's mean/std."""
  return ((pixels.astype(np.float32) / 255.0 - np.asarray(CLIP_MEAN, np.float32))
          / np.asarray(CLIP_STD, np.float32))
