"""CLIP tokenizer: identical ids to OpenAI's BPE (instant-clip-tokenizer as the oracle), offline."""

import csv
import html
import re

import ftfy
import instant_clip_tokenizer
import numpy as np
import pytest

from semclip_jax.data.tokenizer import CLIPTokenizer, clean_caption

EDGE_CASES = [
    "", "   ", "A PHOTO of a CAT.", "Hello,   World!!\t\n", "it's a dog's life; I'll go, we've gone",
    "café naïve — “quotes” ‘single’ 😀 日本語 Ελληνικά", "a &amp; b &lt;x&gt; &amp;amp;",
    "numbers 12345 and 3.14159, 1st 2nd", "no-one's here...?!", "über-straße façade",
    " ".join(["word"] * 100), "supercalifragilisticexpialidocious " * 20,
]


@pytest.fixture(scope="module")
def tokenizer():
  return CLIPTokenizer()


def _openai_reference(texts, context_length=77):
  """OpenAI's clip.tokenize: basic_clean (ftfy, HTML unescaped twice) and whitespace_clean written
  out here, then OpenAI's BPE from the independent Rust implementation in instant-clip-tokenizer."""
  cleaned = [re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(t))).strip()).strip()
             for t in texts]
  return instant_clip_tokenizer.Tokenizer().tokenize_batch(cleaned, context_length=context_length)


def _assert_same(ours, reference, texts):
  bad = np.flatnonzero((ours != reference).any(axis=1))
  assert not len(bad), [(texts[i], ours[i][:12], reference[i][:12]) for i in bad[:3]]


def test_matches_openai_bpe_on_real_captions(tokenizer, sugarcrepe_csv):
  with open(sugarcrepe_csv, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  texts = [row[k] for row in rows[:400] for k in ("caption", "paraphrased", "negation")]
  assert len(texts) >= 200
  ours = tokenizer(texts)
  assert ours.dtype == np.int32 and ours.shape == (len(texts), 77)
  _assert_same(ours, _openai_reference(texts), texts)


@pytest.mark.parametrize("context_length", [77, 16, 5])
def test_matches_openai_bpe_on_edge_cases(tokenizer, context_length):
  ours = tokenizer(EDGE_CASES, context_length=context_length)
  assert ours.shape == (len(EDGE_CASES), context_length)
  _assert_same(ours, _openai_reference(EDGE_CASES, context_length), EDGE_CASES)


def test_truncation_keeps_eos_and_padding_is_zero(tokenizer):
  ids = tokenizer([" ".join(["dog"] * 200), "a dog"])
  assert ids[0, 0] == tokenizer.bos_id == 49406 and ids[0, -1] == tokenizer.eos_id == 49407
  assert (ids[0, 1:-1] != 0).all()
  assert list(ids[1, :4]) == [49406, 320, 1929, 49407] and not ids[1, 4:].any()
  assert list(tokenizer("")[0, :3]) == [49406, 49407, 0]


def test_cleaning_as_openai(tokenizer):
  same = lambda a, b: np.array_equal(tokenizer(a), tokenizer(b))
  assert same("Fish &amp; chips", "fish & chips")
  assert same("“Quoted”   TEXT\n", '"quoted" text')
  assert not same("a red car", "a blue car")


def test_plain_ascii_fast_path_equals_ftfy_and_unescaping():
  """clean_caption skips ftfy and html.unescape on printable ASCII without "&": on such text
  (random, and every printable character next to every other) they must change nothing."""
  rng = np.random.default_rng(0)
  printable = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]
  texts = ["".join(rng.choice(printable, rng.integers(1, 60))) for _ in range(3000)]
  texts += [a + b for a in printable for b in printable]
  texts += ["it's -- a \"quote\" ... `tick` <b>bold</b> #1 ~50% $5 @home", "  spaced   out  "]
  for text in texts:
    assert text.isascii() and text.isprintable() and "&" not in text
    slow = re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()
    assert clean_caption(text) == slow.lower(), text


def test_single_string_and_type_errors(tokenizer):
  np.testing.assert_array_equal(tokenizer("a cat"), tokenizer(["a cat"]))
  with pytest.raises(TypeError, match="sequence of strings"):
    tokenizer.encode("a cat")
  with pytest.raises(ValueError, match="context_length"):
    CLIPTokenizer(context_length=1)


def test_save_and_load_local_folder(tokenizer, tmp_path):
  tokenizer.save_pretrained(str(tmp_path))
  reloaded = CLIPTokenizer.from_pretrained(str(tmp_path))
  assert reloaded.vocab_size == tokenizer.vocab_size == 49408
  np.testing.assert_array_equal(reloaded(EDGE_CASES), tokenizer(EDGE_CASES))
