"""Image transforms shared by training, evaluation and export (uint8 HWC in, float32 HWC out).

- decode (`to_pil`; `open_image` + `decode_rgb` when the size must be known before decoding, for
  JPEG draft decoding: `draft_size`); `open_image` refuses an image whose header declares more than
  `max_pixels` (`MAX_IMAGE_PIXELS`, `data.max_image_pixels`) before any pixel is decoded, and
  `check_resize` an eval resize that would make more (a long thin image): `TOO_LARGE_ERRORS`,
  with PIL's own decompression-bomb refusals, are what the callers count as bad records;
- resize (`RESIZES`): CLIP's eval transform, a bicubic shortest-side resize + centre crop
  (`resize_shortest_and_center_crop`), or the official SemCLIP code's squash to size x size with
  PIL bilinear (`squash`, torchvision `Resize((S, S))` on a PIL image);
- the training crop box (`random_resized_crop_box`, torchvision's RandomResizedCrop sampling);
- normalisation (`NORMALIZATIONS`): CLIP's mean/std or ImageNet's (`normalize`).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

# OpenAI CLIP's normalisation: what every CLIP checkpoint was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet's: what the official SemCLIP code uses (torchvision Normalize), on CLIP checkpoints too.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {"clip": (CLIP_MEAN, CLIP_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
RESIZES = ("shortest_side_crop", "squash")
_CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params
# The default of `data.max_image_pixels`: the most pixels an image may declare in its header, and
# the most the eval resize may make before its crop. 50 M pixels decode to 150 MB of RGB (200 MB
# in PIL's 4-byte pixels) and a resize holds about twice that, per worker: far below a host's
# memory even with 8 workers, yet above any photo in the data this trains on (CC3M and COCO are
# about 0.3 M pixels) and a 48 MP camera frame. It is under PIL's own limit
# (Image.MAX_IMAGE_PIXELS, 89 M: a warning, an error at twice that), so this check decides.
MAX_IMAGE_PIXELS = 50_000_000


class ImageTooLargeError(ValueError):
  """An image that would take more than `max_pixels` pixels to decode or to resize."""


# What "this image is too large" raises: our checks, and PIL's decompression-bomb refusal (the
# warning only where warnings are errors). Callers count it as a bad record, as an undecodable one.
TOO_LARGE_ERRORS = (ImageTooLargeError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning)


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
  """Raises ImageTooLargeError when width x height exceeds `max_pixels` (None: no limit)."""
  if max_pixels is not None and width * height > max_pixels:
    raise ImageTooLargeError(f"{width} x {height} = {width * height:,} pixels, more than "
                             f"max_image_pixels={max_pixels:,}")


def open_image(image: Any, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
  """An encoded image (bytes) opened with its header read and its pixels not yet decoded, so its
  size is known for free; a pixel array as an image. More than `max_pixels` pixels (None: no
  limit) raise ImageTooLargeError here, before any decoding (`TOO_LARGE_ERRORS`)."""
  if isinstance(image, np.ndarray):
    pil = Image.fromarray(image.astype(np.uint8))
  else:
    pil = Image.open(io.BytesIO(image))  # PIL's own bomb check may raise already
  check_pixels(*pil.size, max_pixels)
  return pil


def decode_rgb(pil: Image.Image, draft_size: tuple[int, int] | None = None
               ) -> tuple[Image.Image, int]:
  """`pil` decoded now (a truncated file raises here, not later) as RGB, and the factor its
  coordinates were divided by (1 unless drafted; pixel x of the file is x / factor).

  With `draft_size` a JPEG is decoded at the smallest of the scales 1/2, 1/4, 1/8 of its DCT that
  still covers `draft_size` (PIL's draft mode), i.e. only when it is at least twice as large as
  needed: the decoder skips the detail the resize would average away, at a fraction of the cost.
  Other formats ignore it. After the same resize the result differs from a full decode's by about
  one grey level (mean 0.5, 99th percentile 2 of 255 at 224 from 1024 x 768), so only training
  uses it: evaluation must equal CLIPImageProcessor.
  """
  factor = 1
  if draft_size is not None and pil.format == "JPEG":
    width = pil.width
    drafted = pil.draft(None, (max(1, int(draft_size[0])), max(1, int(draft_size[1]))))
    if drafted is not None:  # (mode, (0, 0, width / factor, height / factor))
      factor = round(width / drafted[1][2])
  pil.load()
  return (pil if pil.mode == "RGB" else pil.convert("RGB")), factor  # convert() copies even RGB


def to_pil(image: Any) -> Image.Image:
  """Encoded bytes or a pixel array -> a decoded RGB image, at full scale."""
  return decode_rgb(open_image(image))[0]


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
  """(width, height) of CLIP's shortest-side resize of a width × height image, before its crop:
  the shortest side `size`, the long side int(size·long/short)."""
  short, long = min(width, height), max(width, height)
  new_long = int(size * long / short)
  return (size, new_long) if width <= height else (new_long, size)


def check_resize(width: int, height: int, size: int, resize: str,
                 max_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
  """Raises ImageTooLargeError when `eval_resize` of a width × height image would make more than
  `max_pixels` pixels: "shortest_side_crop" resizes the whole image before its crop, so a long
  thin image blows up (3,000,000 × 1 at 224: 224 × 672,000,000); "squash" makes size × size."""
  if resize == "shortest_side_crop" and max_pixels is not None:
    new_w, new_h = shortest_side_size(width, height, size)
    if new_w * new_h > max_pixels:
      raise ImageTooLargeError(
          f"{width} x {height} pixels, whose shortest-side resize to {size} would be {new_w} x "
          f"{new_h} = {new_w * new_h:,} pixels, more than max_image_pixels={max_pixels:,}")


def resize_shortest_and_center_crop(pil: Image.Image, size: int) -> np.ndarray:
  """CLIP's eval transform, as CLIPImageProcessor: bicubic resize of the shortest side to `size`
  (long side int(size·long/short)), then the central size × size crop. uint8 HWC out."""
  new_w, new_h = shortest_side_size(*pil.size, size)
  pixels = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BICUBIC))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return pixels[top:top + size, left:left + size]


def squash(pil: Image.Image, size: int) -> np.ndarray:
  """The official SemCLIP transform: the whole image resized to size × size, aspect ignored, with
  PIL's (antialiased) bilinear filter, as torchvision's Resize((size, size)) does to PIL images.
  uint8 HWC [size, size, 3] out."""
  return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))


def eval_resize(pil: Image.Image, size: int, resize: str = "shortest_side_crop") -> np.ndarray:
  """The eval resize named by `data.resize` (`RESIZES`): uint8 HWC [size, size, 3] out."""
  if resize == "squash":
    return squash(pil, size)
  if resize == "shortest_side_crop":
    return resize_shortest_and_center_crop(pil, size)
  raise ValueError(f"unknown data.resize {resize!r}; choose one of {list(RESIZES)}")


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio=(3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of an Inception-style crop, as torchvision's
  RandomResizedCrop.get_params: up to 10 draws of (area fraction in `scale`, log-uniform aspect in
  `ratio`), the first box that fits inside the image kept at a uniform position; if none fits,
  the central crop of the image's aspect clamped to `ratio`.

  Drawing again instead of clipping an oversized box keeps the area fraction inside `scale`
  (clipping shrank it: ~0.85 kept on average on 640×480 for scale (0.9, 1.0)).
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(_CROP_TRIES):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      return left, top, left + w, top + h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  left, top = (width - w) // 2, (height - h) // 2
  return left, top, left + w, top + h


def normalize(pixels: Any, normalization: str = "clip") -> Any:
  """uint8 [..., 3] -> float32 (x/255 - mean) / std with the `NORMALIZATIONS[normalization]`
  mean/std. The same expression on numpy arrays (evaluation, on the host) and on jax arrays (the
  train step, on the device, where the input pipeline ships uint8): equal up to float rounding."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {normalization!r}; choose one of "
                     f"{sorted(NORMALIZATIONS)}")
  mean, std = NORMALIZATIONS[normalization]
  return ((pixels.astype(np.float32) / np.float32(255.0) - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))


def draft_size(width: int, height: int, size: int, resize: str,
               box: tuple[float, float, float, float] | None = None) -> tuple[int, int]:
  """The smallest decoded size of a width x height image from which the transform still reads at
  least `size` pixels per output side: for the crop `box` (random resized crop) its scale, for
  "shortest_side_crop" the shortest side at `size`, for "squash" size x size."""
  if box is not None:
    scale_w, scale_h = size / (box[2] - box[0]), size / (box[3] - box[1])
  elif resize == "squash":
    scale_w, scale_h = size / width, size / height
  else:
    scale_w = scale_h = size / min(width, height)
  return math.ceil(width * scale_w), math.ceil(height * scale_h)
