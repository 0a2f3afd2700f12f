"""triples.cleaning: one clean sentence out of a chatty answer; checks and verifier verdicts."""

import pytest

from semclip_jax.data.triples import cleaning


@pytest.mark.parametrize("answer", [
    'Sure! Here is the paraphrase:\n\n"A dog runs on the beach."\n\nI kept the meaning.',
    "Here's a paraphrased version of the caption: A dog runs on the beach.",
    "1. A dog runs on the beach.\n2. On the beach, a dog runs.",
    "**Paraphrase:** A dog runs on the beach.",
    "A dog runs on the beach. (I changed the word order.)",
    "A dog runs on the beach. This keeps every object.",
    "<think>The user wants a rewrite.</think>\n“A dog runs on the beach.”",
    "```\nA dog runs on the beach.\n```",
    "Certainly! The paraphrased sentence is: A dog runs on the beach.",
    '"A dog runs on the beach".',
])
def test_clean_keeps_only_the_sentence(answer):
  assert cleaning.clean(answer).rstrip(".") == "A dog runs on the beach"


def test_clean_keeps_as_many_sentences_as_the_caption_and_a_captions_own_colon():
  assert cleaning.clean("Mr. Smith walks. He smiles. Note: I kept it.", sentences=2) == (
      "Mr. Smith walks. He smiles.")
  assert cleaning.clean("Photo: a dog in a park.") == "Photo: a dog in a park."


def test_check_and_verdicts():
  caption = "A dog runs on the beach."
  assert [cleaning.check(t, caption) for t in
          ["", "?? !!", "I'm sorry, I can't do that.", "a dog runs on the beach", caption * 3,
           "On the beach, a dog runs."]] == [
      cleaning.EMPTY, cleaning.NO_WORDS, cleaning.REFUSAL, cleaning.SAME, cleaning.TOO_LONG, None]
  assert [cleaning.parse_verdict(t) for t in ["Yes.", "no, it differs", "<think>no</think> YES",
                                              "Hard to say"]] == [True, False, True, None]


def test_clean_turns_control_characters_into_spaces():
  # NUL, escape, DEL, C1: no output file gets one (a CSV reader stops at a NUL).
  assert cleaning.clean("A dog\x00runs\x1b on the\x7f\x9bbeach.\x00") == "A dog runs on the beach."
  assert cleaning.clean("\x00\x01 \x02") == ""
