"""Data: tokenizer, image transforms, triple sources and the grain input pipeline."""
