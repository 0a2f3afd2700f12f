"""The notebook API's inference helpers: the evaluation's pixels and embeddings, with clear errors."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from semclip_jax import inference, storage
from semclip_jax.data import default_config
from semclip_jax.data.tokenizer import CLIPTokenizer
from semclip_jax.hf import preprocessor_config
from semclip_jax.models import create_clip, get_preset
from semclip_jax.models.clip import l2_normalize


@pytest.fixture(scope="module")
def model():
  return create_clip(get_preset("tiny"), seed=0)


def _images(folder):
  rng = np.random.default_rng(3)
  arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(50, 70, 3), (91, 37, 3)]]
  paths = []
  for i, array in enumerate(arrays):
    paths.append(str(folder / f"{i}.png"))
    Image.fromarray(array).save(paths[-1])
  return arrays, paths


def test_pixels_are_clip_image_processors_for_every_input_kind(tmp_path):
  arrays, paths = _images(tmp_path)
  processor = CLIPImageProcessorPil(**{k: v for k, v in preprocessor_config(32).items()
                                       if k not in ("image_processor_type", "processor_class")})
  expected = np.asarray(processor(images=[Image.fromarray(a) for a in arrays])["pixel_values"]
                        ).transpose(0, 2, 3, 1)
  data = default_config()
  data.image_size = 32
  for images in (paths, arrays, [Image.fromarray(a) for a in arrays],
                 [open(p, "rb").read() for p in paths]):
    np.testing.assert_allclose(inference.pixels(images, data), expected, rtol=0, atol=1e-6)
  # The config's transform is the one applied: squash + ImageNet statistics differ.
  data.update(resize="squash", normalization="imagenet")
  assert not np.allclose(inference.pixels(paths, data), expected, atol=1e-3)


def test_pixels_of_images_in_a_bucket(tmp_path, gcs_bucket):
  _, paths = _images(tmp_path)
  remote = [f"{gcs_bucket}/images/{i}.png" for i in range(len(paths))]
  for path, target in zip(paths, remote):
    storage.upload(path, target)
  np.testing.assert_array_equal(inference.pixels(remote), inference.pixels(paths))
  with pytest.raises(ValueError, match="image 1 "):
    inference.pixels([remote[0], f"{gcs_bucket}/images/none.png"])


def test_embeddings_are_the_towers_on_those_inputs(tmp_path, model):
  _, paths = _images(tmp_path)
  images = inference.embed_images(model, paths, batch_size=1)
  pixels = inference.pixels(paths, image_size=model.config.vision.image_size)
  np.testing.assert_allclose(images, l2_normalize(model.encode_image(pixels)), atol=1e-5)
  captions = ["a red circle", "there is no red circle", "a photo of a blue square"]
  texts = inference.embed_texts(model, captions, batch_size=2)
  tokens = CLIPTokenizer()(captions, context_length=model.config.text.max_position_embeddings)
  np.testing.assert_allclose(texts, l2_normalize(model.encode_text(tokens)), atol=1e-5)
  assert images.shape == (2, model.config.projection_dim)
  np.testing.assert_allclose(np.linalg.norm(texts, axis=-1), 1, atol=1e-5)


def test_unreadable_images_name_their_index(tmp_path):
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"image 1 \(.*broken.jpg\): undecodable image"):
    inference.pixels([np.zeros((8, 8, 3), np.uint8), str(tmp_path / "broken.jpg")])
  with pytest.raises(ValueError, match="image 0 .*missing.png"):
    inference.pixels([str(tmp_path / "missing.png")])
  with pytest.raises(ValueError, match=r"image 0: a pixel array must be uint8 \[H, W, 3\]"):
    inference.pixels([np.zeros((8, 8), np.float32)])
