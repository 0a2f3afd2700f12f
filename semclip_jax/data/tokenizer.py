"""CLIP's byte-pair-encoding tokenizer, offline by default.

Built on transformers' `CLIPTokenizer` (a Rust `tokenizers` backend). The default vocabulary is
OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped in `vendor/`, so a fresh install needs no hub.
Cleaning and truncation follow OpenAI's `clip.tokenize`: ftfy + HTML unescape, whitespace folding,
lower case; `<|startoftext|> ... <|endoftext|>`; an over-long caption is cut to the context length
with its last token replaced by `<|endoftext|>`, so the text tower always finds an EOS.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import re
from typing import Sequence

import ftfy
import numpy as np
import transformers

CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's vocabulary: 256 byte symbols, the same with "</w>", 48,894 merges, then 2 specials.
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> list[str]:
  """GPT-2's reversible byte -> printable character table, in the order OpenAI's vocab lists it.

  Printable bytes map to themselves and come first; the others map to 256, 257, ... after them.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  others = [b for b in range(256) if b not in printable]
  return [chr(c) for c in printable] + [chr(256 + n) for n in range(len(others))]


@functools.lru_cache(maxsize=1)
def _openai_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
  data = importlib.resources.files("semclip_jax.data").joinpath("vendor", VOCAB_FILE).read_bytes()
  lines = gzip.decompress(data).decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
  merges = [tuple(line.split()) for line in lines]
  symbols = _bytes_to_unicode()
  tokens = (symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
            + ["<|startoftext|>", "<|endoftext|>"])
  return {t: i for i, t in enumerate(tokens)}, merges


def clean_caption(text: str) -> str:
  """OpenAI CLIP's text cleaning: fix mojibake, unescape HTML twice, fold whitespace, lower case.

  Printable ASCII without "&" skips ftfy and the unescaping, which leave such text unchanged
  (tested against them): ftfy alone was half of the tokenizer's time per caption.
  """
  if not (text.isascii() and text.isprintable() and "&" not in text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  text = text.strip()
  return re.sub(r"\s+", " ", text).strip().lower()


class CLIPTokenizer:
  """Texts -> int32 token ids [N, context_length], padded with `pad_id` (0, as OpenAI's)."""

  def __init__(self, hf_tokenizer: transformers.PreTrainedTokenizerBase | None = None, *,
               context_length: int = CONTEXT_LENGTH, pad_id: int = 0):
    if hf_tokenizer is None:
      vocab, merges = _openai_vocab()
      hf_tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges,
                                                model_max_length=CONTEXT_LENGTH)
    if context_length < 2:
      raise ValueError(f"context_length must hold at least BOS and EOS, got {context_length}")
    self.hf = hf_tokenizer
    self.context_length = context_length
    self.pad_id = pad_id
    self.bos_id = hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.bos_token or "<|startoftext|>")
    self.eos_id = hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.eos_token or "<|endoftext|>")

  @classmethod
  def from_pretrained(cls, path_or_repo_id: str, **kwargs) -> "CLIPTokenizer":
    """Loads the tokenizer of a local HF folder, or of a hub id (needs network)."""
    return cls(transformers.AutoTokenizer.from_pretrained(path_or_repo_id), **kwargs)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Untruncated ids with BOS and EOS, one list per text."""
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of strings; wrap a single caption in a list")
    cleaned = [clean_caption(t) for t in texts]
    encodings = self.hf.backend_tokenizer.encode_batch(cleaned, add_special_tokens=False)
    return [[self.bos_id, *e.ids, self.eos_id] for e in encodings]

  def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
    """A caption or a list of captions -> int32 [N, context_length]."""
    if isinstance(texts, str):
      texts = [texts]
    length = context_length or self.context_length
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for row, ids in enumerate(self.encode(texts)):
      if len(ids) > length:
        ids = ids[:length - 1] + [self.eos_id]
      out[row, :len(ids)] = ids
    return out

  def save_pretrained(self, out_dir: str) -> None:
    self.hf.save_pretrained(out_dir)
