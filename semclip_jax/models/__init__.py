"""CLIP towers in Flax NNX: `CLIP`, its configs and presets."""

from semclip_jax.models.clip import CLIP, clip_logits, create_clip
from semclip_jax.models.model_config import PRESETS, CLIPConfig, TextConfig, VisionConfig, get_preset

__all__ = ["CLIP", "CLIPConfig", "PRESETS", "TextConfig", "VisionConfig", "clip_logits",
           "create_clip", "get_preset"]
