"""Tiny random-weight `transformers.CLIPModel`s: the PyTorch oracle the parity tests compare to."""

from __future__ import annotations

import torch
import transformers

# Two deliberately different architectures: OpenAI-style legacy EOS pooling with quick_gelu, and
# LAION-style gelu with current EOS pooling, odd widths, non-4x MLPs and another patch/image size.
ORACLE_CONFIGS = {
    "quick_gelu_legacy_eos": dict(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, hidden_act="quick_gelu", eos_token_id=2),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8,
                           hidden_act="quick_gelu"),
        projection_dim=32),
    "gelu_first_eos": dict(
        text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=3, hidden_act="gelu", max_position_embeddings=77),
        vision_config=dict(hidden_size=40, intermediate_size=120, num_hidden_layers=2,
                           num_attention_heads=5, image_size=42, patch_size=14, hidden_act="gelu"),
        # Not the default scale, so a loader that drops logit_scale fails the logits check.
        projection_dim=24, logit_scale_init_value=2.0),
}


def make_oracle(name: str, folder: str, seed: int = 0) -> transformers.CLIPModel:
  """Builds the named random CLIPModel, perturbs every parameter (so LayerNorm weights, biases and
  the class token are not trivially 1/0) and saves it to `folder` as safetensors."""
  torch.manual_seed(seed)
  model = transformers.CLIPModel(transformers.CLIPConfig(**ORACLE_CONFIGS[name])).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(folder)
  return model


def torch_embeddings(model: transformers.CLIPModel, pixels_nhwc, token_ids):
  """Unnormalised image/text embeddings and image->text logits of the PyTorch model."""
  with torch.no_grad():
    pixels = torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2).contiguous()
    ids = torch.from_numpy(token_ids).long()
    zi = model.get_image_features(pixel_values=pixels).pooler_output
    zt = model.get_text_features(input_ids=ids).pooler_output
    logits = model(input_ids=ids, pixel_values=pixels).logits_per_image
  return zi.numpy(), zt.numpy(), logits.numpy()
