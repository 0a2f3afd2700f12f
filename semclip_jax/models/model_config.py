"""CLIP architecture descriptions: the config dataclasses (`CLIPConfig`, `VisionConfig`,
`TextConfig`) and the named presets.

Field names and defaults follow Hugging Face's `CLIPTextConfig` / `CLIPVisionConfig` / `CLIPConfig`
so that a `config.json` maps onto them one to one (see `semclip_jax.hf`). A field that a HF file
omits takes the HF default, which is why the defaults here must stay equal to transformers'.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# transformers' CLIPConfig.logit_scale_init_value: log(1 / 0.07).
LOGIT_SCALE_INIT = 2.6592


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  bos_token_id: int = 49406
  # 2 marks the legacy OpenAI configs: pool at the highest token id instead of the first EOS.
  eos_token_id: int = 49407
  pad_token_id: int = 1


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  projection_dim: int = 512
  logit_scale_init_value: float = LOGIT_SCALE_INIT

  def replace(self, **changes: Any) -> "CLIPConfig":
    return dataclasses.replace(self, **changes)


def _vit(width: int, layers: int, heads: int, patch: int, image: int = 224) -> VisionConfig:
  return VisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                      num_attention_heads=heads, patch_size=patch, image_size=image)


def _text(width: int, layers: int, heads: int) -> TextConfig:
  return TextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                    num_attention_heads=heads)


PRESETS: dict[str, CLIPConfig] = {
    # Small enough for unit tests and the CPU quickstart; full CLIP vocabulary and context.
    "tiny": CLIPConfig(text=_text(64, 2, 2), vision=_vit(64, 2, 2, patch=8, image=32),
                       projection_dim=32),
    # OpenAI's released architectures (ViT-B/32 is transformers' CLIPConfig() default).
    "B/32": CLIPConfig(text=_text(512, 12, 8), vision=_vit(768, 12, 12, patch=32), projection_dim=512),
    "B/16": CLIPConfig(text=_text(512, 12, 8), vision=_vit(768, 12, 12, patch=16), projection_dim=512),
    "L/14": CLIPConfig(text=_text(768, 12, 12), vision=_vit(1024, 24, 16, patch=14),
                       projection_dim=768),
}


def get_preset(name: str, **changes: Any) -> CLIPConfig:
  """Returns the named preset, with top-level fields replaced by `changes`."""
  if name not in PRESETS:
    raise ValueError(f"unknown CLIP preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**changes)
