"""semclip_jax: CLIP training and evaluation with paraphrase and negation (SemCLIP) in JAX."""

import os

__version__ = "0.1.0"

# transformers (our tokenizer and Hugging Face interchange; its PyTorch models are never used)
# prints "PyTorch was not found. Models won't be available ..." on import when torch is absent,
# which the default install is: on every command, and again in each data worker process. It is
# transformers' only "advisory" warning, the kind this variable switches off; its level stays
# WARNING, so every other warning still shows. Set before any submodule imports transformers, and
# inherited by the worker processes; a value the user set (even empty) is kept.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
