"""Shapes source: items, determinism, held-out val/test splits, make_source's split mapping, and
text checked against scenes and pixels.

The text checks parse the strings with regular expressions written here (only the vocabulary and
synonym tables come from the module) and verify each claim against the scene's boxes: captions and
paraphrases must be true, and every negation must carry a claim that the scene makes false.
"""

import hashlib
import itertools
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

from semclip_jax import data as data_lib
from semclip_jax.data import shapes

N_TEXT = 500
COLOR = "|".join(shapes.COLORS)
SHAPE = "|".join(shapes.SHAPES)
SIZE = "small|large"
NP_BARE = rf"(?:({SIZE}) )?({COLOR}) ({SHAPE})"
NP = rf"(?:an?|the) {NP_BARE}"
REL = r"(to the left of|to the right of|above|below)"
POSSESSIVE = {"on its left": "left", "on its right": "right", "above it": "above",
              "below it": "below"}
REL_NAME = {"to the left of": "left", "to the right of": "right", "above": "above",
            "below": "below"}


# ---- parsing helpers ----
def normalize(text):
  """Maps every synonym back to the canonical word, so one set of patterns parses all forms."""
  table = {**shapes.COLOR_SYNONYMS, **shapes.SHAPE_SYNONYMS, **shapes.SIZE_SYNONYMS}
  pairs = sorted(((syn, canon) for canon, syns in table.items() for syn in syns),
                 key=lambda p: -len(p[0]))
  for syn, canon in pairs:
    text = re.sub(rf"\b{re.escape(syn)}\b", canon, text)
  text = re.sub(r"\b(?:(?:to|on) the )?(left|right) of\b", r"to the \1 of", text)
  text = re.sub(r"\bover\b", "above", text)
  return re.sub(r"\b(?:under|beneath)\b", "below", text)


def find(scene, color, shape, size=None):
  """The scene's object with this colour and shape; its size must match when the text gives one."""
  hits = [o for o in scene if o["color"] == color and o["shape"] == shape]
  assert len(hits) == 1, (color, shape, scene)
  assert size is None or hits[0]["size"] == size, (size, hits[0])
  return hits[0]


def holds(a, b, rel):
  """Whole-box relation: a lies entirely left of / right of / above / below b."""
  (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
  return {"left": ax1 <= bx0, "right": ax0 >= bx1, "above": ay1 <= by0, "below": ay0 >= by1}[rel]


def mentioned(text):
  """(colour, shape) pairs the (normalised) text names, as attribute-first or "a X that is C"."""
  pairs = {(c, s) for _, c, s in re.findall(NP_BARE, text)}
  pairs |= {(c, s) for _, s, c in re.findall(rf"(?:({SIZE}) )?({SHAPE}) that is ({COLOR})", text)}
  return pairs


def relations(text):
  """((size, colour, shape), rel, (size, colour, shape)) for every relation the text asserts."""
  out = []
  for m in re.finditer(rf"{NP}(?:, which is)? {REL} {NP}", text):
    g = m.groups()
    out.append((g[0:3], REL_NAME[g[3]], g[4:7]))
  for m in re.finditer(rf"{NP} has {NP} ({'|'.join(POSSESSIVE)})", text):
    g = m.groups()
    out.append((g[3:6], POSSESSIVE[g[6]], g[0:3]))
  return out


def check_true(text, scene):
  """Asserts that the text names exactly the scene's objects and that its relations hold."""
  assert mentioned(text) == {(o["color"], o["shape"]) for o in scene}, text
  rels = relations(text)
  assert len(rels) == len(scene) - 1, (text, rels)
  for (s1, c1, h1), rel, (s2, c2, h2) in rels:
    assert holds(find(scene, c1, h1, s1), find(scene, c2, h2, s2), rel), (text, scene)


def refuted_claims(text, scene):
  """How many claims of a negation the scene contradicts (each one is checked to be false)."""
  count = 0
  for size, c, s in re.findall(rf"\bno {NP_BARE}", text) + re.findall(rf"without {NP}", text):
    find(scene, c, s, size or None)  # "no X" / "without X" is false: X is there
    count += 1
  for size, s, c in re.findall(rf"an? (?:({SIZE}) )?({SHAPE}) that is not ({COLOR})", text):
    assert [o["color"] for o in scene if o["shape"] == s] == [c], (text, scene)
    count += 1
  for size, c, s in re.findall(rf"an? (?:({SIZE}) )?({COLOR}) shape that is not an? ({SHAPE})",
                               text):
    assert [o["shape"] for o in scene if o["color"] == c] == [s], (text, scene)
    count += 1
  for m in re.finditer(rf"{NP} is not {REL} {NP}", text):
    g = m.groups()
    assert holds(find(scene, g[1], g[2], g[0]), find(scene, g[5], g[6], g[4]), REL_NAME[g[3]])
    count += 1
  return count


def paraphrase_form(caption, paraphrase):
  if "which is" in paraphrase or paraphrase.startswith("there is"):
    return "relative"
  if " has " in paraphrase:
    return "possessive"
  if normalize(paraphrase) == normalize(caption):
    return "synonym"
  return "reorder"


def negation_form(negation):
  for form, keys in [("absent", ("there is no ", " and no ")), ("without", (" without ",)),
                     ("attribute", (" that is not ",)), ("relation", (" is not ",))]:
    if any(k in negation for k in keys):
      return form
  raise AssertionError(negation)


def digest(item):
  h = hashlib.sha256(item["image"].tobytes())
  for key in ("caption", "paraphrase", "negation", "id"):
    h.update(item[key].encode())
  return h.hexdigest()


@pytest.fixture(scope="module")
def samples():
  source = shapes.ShapesSource(split="train", size=None, seed=0)
  return [(source[i], source.scene(i)) for i in range(N_TEXT)]


# ---- items and indexing ----
def test_item_structure_and_ids():
  for image_size in (32, 64, 224):
    source = shapes.ShapesSource(size=50, image_size=image_size)
    ids = set()
    for i in range(len(source)):
      item = source[i]
      assert set(item) == {"image", "caption", "paraphrase", "negation", "id", "image_key"}
      assert item["image_key"] == item["id"]  # each item is its own image
      assert item["image"].dtype == np.uint8
      assert item["image"].shape == (image_size, image_size, 3)
      for key in ("caption", "paraphrase", "negation", "id"):
        assert isinstance(item[key], str) and item[key].isascii() and item[key]
      ids.add(item["id"])
    assert len(ids) == 50
  val_ids = {shapes.ShapesSource(split="val")[i]["id"] for i in range(50)}
  test_ids = {shapes.ShapesSource(split="test")[i]["id"] for i in range(50)}
  assert not val_ids & ids and not test_ids & ids and not val_ids & test_ids
  assert all(i.startswith("shapes-val-") for i in val_ids)


def test_len_and_errors():
  assert len(shapes.ShapesSource(size=7)) == 7
  infinite = shapes.ShapesSource(size=None)
  assert len(infinite) == 2**31 - 1
  assert infinite[2**31 - 2]["id"] == "shapes-train-2147483646"
  for bad in (7, -1, 100):
    with pytest.raises(IndexError):
      shapes.ShapesSource(size=7)[bad]
  with pytest.raises(IndexError):
    infinite[2**31 - 1]
  with pytest.raises(IndexError):
    infinite.scene(-3)
  for kwargs in ({"split": "validation"}, {"split": "nope"}, {"size": 0}, {"size": -5},
                 {"size": 2**31}, {"seed": -1}, {"image_size": 8}):
    with pytest.raises(ValueError):
      shapes.ShapesSource(**kwargs)
  assert "'val'" in repr(shapes.ShapesSource(split="val"))


# ---- determinism ----
def test_determinism_across_orders_instances_and_pickling():
  order = [5, 0, 17, 999, 5, 3]
  a = shapes.ShapesSource(seed=3, size=1000)
  first = {i: digest(a[i]) for i in order}
  b = shapes.ShapesSource(seed=3, size=1000)
  assert {i: digest(b[i]) for i in reversed(order)} == first
  c = pickle.loads(pickle.dumps(a))
  assert {i: digest(c[i]) for i in order} == first
  np.testing.assert_array_equal(a[17]["image"], b[17]["image"])
  assert a.scene(17) == b.scene(17)


def test_determinism_in_a_fresh_process():
  code = ("import hashlib; from semclip_jax.data import shapes; s = shapes.ShapesSource("
          "split='test', seed=11, image_size=48); print(','.join(hashlib.sha256("
          "s[i]['image'].tobytes() + (s[i]['caption'] + s[i]['paraphrase'] + s[i]['negation'])"
          ".encode()).hexdigest() for i in range(8)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  s = shapes.ShapesSource(split="test", seed=11, image_size=48)
  here = [hashlib.sha256(s[i]["image"].tobytes() + (s[i]["caption"] + s[i]["paraphrase"]
                                                    + s[i]["negation"]).encode()).hexdigest()
          for i in range(8)]
  assert out.stdout.strip().split(",") == here


def test_seeds_and_splits_differ():
  base = [digest(shapes.ShapesSource(seed=0)[i]) for i in range(20)]
  other_seed = [digest(shapes.ShapesSource(seed=1)[i]) for i in range(20)]
  assert sum(x != y for x, y in zip(base, other_seed)) >= 18
  # val and test are different streams: their items differ beyond the ids.
  held_out = {split: [shapes.ShapesSource(seed=0, split=split)[i] for i in range(20)]
              for split in ("val", "test")}
  for split, items in held_out.items():
    assert sum(x != digest(y) for x, y in zip(base, items)) >= 18, split
  unnamed = lambda item: hashlib.sha256(item["image"].tobytes()).hexdigest()
  assert not {unnamed(i) for i in held_out["val"]} & {unnamed(i) for i in held_out["test"]}


def test_make_source_maps_splits():
  config = data_lib.default_config()
  config.update(shapes_size=30, shapes_eval_size=7)
  for split, size in (("train", 30), ("val", 7), ("test", 7)):
    source = data_lib.make_source(config, split)
    assert (source.split, len(source)) == (split, size)
    assert source[0]["id"].startswith(f"shapes-{split}-")
  with pytest.raises(ValueError, match="shapes has no split 'validation'"):
    data_lib.make_source(config, "validation")


# ---- scenes and held-out combinations ----
def test_held_out_constant():
  combos = set(itertools.product(shapes.COLORS, shapes.SHAPES))
  assert shapes.HELD_OUT < combos
  assert 0.15 <= len(shapes.HELD_OUT) / len(combos) <= 0.25
  assert {c for c, _ in shapes.HELD_OUT} == set(shapes.COLORS)
  assert {s for _, s in shapes.HELD_OUT} == set(shapes.SHAPES)


def test_train_never_shows_held_out_and_val_and_test_always_do():
  combos = set(itertools.product(shapes.COLORS, shapes.SHAPES))
  train = shapes.ShapesSource(split="train", size=None, seed=5)
  seen = set()
  for i in range(2000):
    scene = [(o["color"], o["shape"]) for o in train.scene(i)]
    assert not set(scene) & shapes.HELD_OUT, scene
    seen |= set(scene)
  assert seen == combos - shapes.HELD_OUT  # every allowed pair does occur
  for split in ("val", "test"):
    held_out = shapes.ShapesSource(split=split, size=None, seed=5)
    seen = set()
    for i in range(300):
      scene = {(o["color"], o["shape"]) for o in held_out.scene(i)}
      assert scene & shapes.HELD_OUT, (split, scene)
      seen |= scene
    assert shapes.HELD_OUT <= seen, split


def test_scene_layout():
  source = shapes.ShapesSource(size=None, seed=2, image_size=64)
  counts, radii = set(), {"small": [], "large": []}
  for i in range(1000):
    scene = source.scene(i)
    counts.add(len(scene))
    assert len({o["color"] for o in scene}) == len({o["shape"] for o in scene}) == len(scene)
    for o in scene:
      x0, y0, x1, y1 = o["box"]
      assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
      assert o["rgb"] == shapes.COLORS[o["color"]]
      radii[o["size"]].append(x1 - x0)
    for a, b in itertools.combinations(scene, 2):  # boxes pairwise disjoint
      assert any(holds(a, b, rel) for rel in shapes.RELATIONS), (a, b)
  assert counts == {1, 2, 3}
  assert max(radii["small"]) < min(radii["large"])


# ---- text against scenes ----
def test_strings_are_plain_single_sentences(samples):
  for item, _ in samples:
    for key in ("caption", "paraphrase", "negation"):
      text = item[key]
      assert text.isascii() and text == text.strip() and "." not in text and "\n" not in text
      assert "  " not in text
    assert len({item["caption"], item["paraphrase"], item["negation"]}) == 3


def test_captions_are_true(samples):
  words = set(shapes.COLORS) | set(shapes.SHAPES)
  for item, scene in samples:
    caption = item["caption"]
    assert normalize(caption) == caption  # the original uses canonical words only
    present = {o["color"] for o in scene} | {o["shape"] for o in scene}
    assert set(re.findall(r"[a-z]+", caption)) & words <= present, (caption, scene)
    assert not re.search(r"\b(no|not|without)\b", caption)
    check_true(caption, scene)


def test_paraphrases_are_true_and_varied(samples):
  forms = {}
  for item, scene in samples:
    check_true(normalize(item["paraphrase"]), scene)
    form = paraphrase_form(item["caption"], item["paraphrase"])
    forms[form] = forms.get(form, 0) + 1
  assert set(forms) == {"relative", "possessive", "synonym", "reorder"}, forms
  assert min(forms.values()) >= N_TEXT // 10, forms


def test_negations_are_false_and_varied(samples):
  forms = {}
  for item, scene in samples:
    negation = normalize(item["negation"])
    assert re.search(r"\b(no|not|without)\b", negation), negation
    assert refuted_claims(negation, scene) >= 1, (negation, scene)
    form = negation_form(negation)
    forms[form] = forms.get(form, 0) + 1
  assert set(forms) == {"absent", "without", "attribute", "relation"}, forms
  assert min(forms.values()) >= N_TEXT // 20, forms


# ---- pixels against scenes ----
@pytest.mark.parametrize("image_size", [48, 64, 224])
def test_objects_are_drawn_in_their_boxes(image_size):
  source = shapes.ShapesSource(size=None, seed=4, image_size=image_size)
  for i in range(60 if image_size < 100 else 20):
    image, scene = source[i]["image"].astype(np.int32), source.scene(i)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) >= len(scene) + 1  # not blank
    yy, xx = np.mgrid[:image_size, :image_size]
    for o in scene:
      match = np.all(np.abs(image - np.array(o["rgb"])) <= 8, axis=-1)
      x0, y0, x1, y1 = o["box"]
      inside = (xx >= x0 - 1) & (xx <= x1 + 1) & (yy >= y0 - 1) & (yy <= y1 + 1)
      assert not np.any(match & ~inside), (i, o)  # the colour appears nowhere else
      assert match.sum() >= 0.2 * (x1 - x0) * (y1 - y0), (i, o, match.sum())
