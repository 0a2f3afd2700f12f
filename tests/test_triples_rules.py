"""triples.rules: the offline templates on every SugarCrepe++ caption, and exact examples."""

import time

import pytest

from semclip_jax.data import sources
from semclip_jax.data.triples import cleaning, files, rules
from triples_helpers import read_csv


def test_rules_backend_on_every_sugarcrepe_caption(sugarcrepe_csv, tmp_path):
  header, rows, _ = sources.read_rows(str(sugarcrepe_csv))
  captions = [r["caption"] for r in rows]
  assert len(captions) == 4757
  start = time.monotonic()
  for caption in captions:
    for made in (rules.negate(caption), rules.paraphrase(caption)):
      assert made.strip() and cleaning.normalize(made) != cleaning.normalize(caption), caption
  assert time.monotonic() - start < 5
  summary = files.run(str(sugarcrepe_csv), str(tmp_path / "out.csv"), rules.RulesBackend(),
                      log=lambda m: None)
  assert summary["counts"]["negation"].get("failed", 0) == 0
  assert summary["counts"]["paraphrase"].get("failed", 0) == 0
  out = read_csv(tmp_path / "out.csv")
  assert list(out[0])[:len(header)] == header and len(out) == 4757
  assert all(r["paraphrased"] and r["negation"] and r["paraphrased"] != r["caption"] for r in out)


@pytest.mark.parametrize("caption, negation, paraphrase", [
    ("A zebra is standing in an open field.", "A zebra is not standing in an open field.",
     "In an open field, a zebra is standing."),
    ("A woman sits at a counter.", "A woman does not sit at a counter.",
     "At a counter, a lady sits."),
    ("Two dogs playing with a ball", "There are no dogs playing with a ball",
     "There are two dogs playing with a ball"),
    ("There is no cat on the bed.", "There is a cat on the bed.", "On the bed, there is no cat."),
    ("THERE ARE WOMEN LAUGHING UNDER THE UMBRELLA",
     "THERE ARE NOT WOMEN LAUGHING UNDER THE UMBRELLA",
     "UNDER THE UMBRELLA, THERE ARE WOMEN LAUGHING"),
])
def test_rules_templates(caption, negation, paraphrase):
  assert (rules.negate(caption), rules.paraphrase(caption)) == (negation, paraphrase)
