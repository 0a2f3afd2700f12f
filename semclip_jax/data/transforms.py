"""Image preprocessing constants and transforms shared by training, evaluation and export."""

# OpenAI CLIP's normalisation (not ImageNet's): what every CLIP checkpoint was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
