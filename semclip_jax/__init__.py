"""semclip_jax: CLIP training and evaluation with paraphrase and negation (SemCLIP) in JAX."""

__version__ = "0.1.0"
