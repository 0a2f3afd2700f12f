"""Procedural "shapes" triples: the built-in dataset a fresh machine trains on with no downloads.

Each item is 1-3 coloured geometric objects on a plain grey background, drawn on the fly with PIL,
with a caption, a paraphrase (same meaning) and a negation (contradicts the image). Every item is a
pure function of (seed, split, index), so the source is random-access and grain-compatible. Each
item is its own image: its `image_key` is its id.

Text is generated from a structured scene, never edited as strings, which makes the truth of each
string hold by construction:
- colours and shapes are unique within a scene, so "a circle that is not red" is false whenever
  the scene's (only) circle is red, and "the red circle" always names one object;
- objects sit in distinct cells of a 3x3 grid, so "left of" / "above" between objects in different
  columns / rows hold for their whole bounding boxes, not just their centres.

Held-out combinations (`HELD_OUT`): 7 of the 35 (colour, shape) pairs, 20%, fixed by the rule
shape = SHAPES[(3 * colour_index + 1) % 5] (every colour once, every shape at least once), never
appear in "train"; every "val" and "test" item shows at least one, to test generalisation to unseen
pairs. "val" and "test" draw from different random streams (and ids name the split), so they are
different items.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
# Random stream per split: "test" keeps the stream of the former "eval" split, so its items (and
# scores on it) are unchanged.
_STREAMS = {"train": 0, "test": 1, "val": 2}
COLORS = {  # saturated and far from the grey background, so pixel colours identify objects
    "red": (230, 30, 30), "green": (30, 190, 60), "blue": (40, 80, 240),
    "yellow": (240, 220, 30), "purple": (150, 50, 200), "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("red", "square"), ("green", "cross"), ("blue", "triangle"), ("yellow", "circle"),
    ("purple", "star"), ("orange", "square"), ("white", "cross"),
})
RELATIONS = ("left", "right", "above", "below")
COLOR_SYNONYMS = {
    "red": ("crimson", "scarlet"), "green": ("emerald",), "blue": ("cobalt", "azure"),
    "yellow": ("golden", "lemon"), "purple": ("violet",), "orange": ("amber", "tangerine"),
    "white": ("ivory", "snow-white"),
}
SHAPE_SYNONYMS = {
    "circle": ("disc", "disk"), "square": ("box", "block"), "triangle": ("three-sided shape",),
    "star": ("five-pointed star",), "cross": ("plus sign", "plus shape"),
}
SIZE_SYNONYMS = {"small": ("little", "tiny"), "large": ("big",)}
RELATION_SYNONYMS = {
    "left": ("left of", "on the left of"), "right": ("right of", "on the right of"),
    "above": ("over",), "below": ("under", "beneath"),
}
PARAPHRASE_FORMS = ("reorder", "relative", "possessive", "synonym")
NEGATION_FORMS = ("absent", "without", "attribute", "relation")  # "relation" needs 2+ objects

MAX_OBJECTS = 3
GRID = 3
_INFINITE = 2**31 - 1
_RELATION_TEXT = {"left": "to the left of", "right": "to the right of", "above": "above",
                  "below": "below"}
_INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_POSSESSIVE = {"left": "on its left", "right": "on its right", "above": "above it",
               "below": "below it"}  # "B has A on its left" == "A left of B"
_RADIUS = {"small": 0.26, "large": 0.42}  # as a fraction of the cell width
_SYNONYM_PROB = 0.3  # structural paraphrases and negations also use synonyms this often
_SIZE_MENTION_PROB = 0.25
_ALL_COMBOS = tuple((c, s) for c in COLORS for s in SHAPES)
_HELD_OUT_SORTED = tuple(sorted(HELD_OUT))


def _unit_polygons() -> dict[str, list[tuple[float, float]]]:
  """Vertices inside the unit box [-1, 1]^2, scaled and moved per object when drawn."""
  angles = -np.pi / 2 + np.arange(10) * np.pi / 5
  radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
  star = list(zip(radii * np.cos(angles), radii * np.sin(angles)))
  w = 0.4  # half-width of the cross's arms
  cross = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
           (-1, -w), (-w, -w)]
  return {"triangle": [(0.0, -1.0), (1.0, 0.9), (-1.0, 0.9)], "star": star, "cross": cross}


_POLYGONS = _unit_polygons()


# ----------------------------------------------------------------------------------------------
# Scenes.
# ----------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _combos(rng: np.random.Generator, split: str) -> list[tuple[str, str]]:
  """1-3 (colour, shape) pairs with distinct colours and distinct shapes, in random order."""
  n = int(rng.integers(1, MAX_OBJECTS + 1))
  held_out = split != "train"
  combos = [_pick(rng, _HELD_OUT_SORTED)] if held_out else []
  while len(combos) < n:
    colors, shapes = {c for c, _ in combos}, {s for _, s in combos}
    # Never empty: each colour holds out one shape, so 2+ of the 3+ unused shapes remain allowed.
    options = [(c, s) for c, s in _ALL_COMBOS if c not in colors and s not in shapes
               and (held_out or (c, s) not in HELD_OUT)]
    combos.append(_pick(rng, options))
  return [combos[i] for i in rng.permutation(n)]


def _layout(rng: np.random.Generator, split: str, image_size: int) -> tuple[list[dict], int]:
  """The objects (each in its own grid cell, inside it with a pixel to spare) and the grey level."""
  combos = _combos(rng, split)
  cells = rng.choice(GRID * GRID, size=len(combos), replace=False)
  cell = image_size / GRID
  objects = []
  for (color, shape), k in zip(combos, cells):
    row, col = divmod(int(k), GRID)
    size = _pick(rng, SIZES)
    r = min(_RADIUS[size] * cell, cell / 2 - 1)
    cx = col * cell + rng.uniform(r + 1, cell - r - 1)
    cy = row * cell + rng.uniform(r + 1, cell - r - 1)
    objects.append({"color": color, "shape": shape, "size": size, "rgb": COLORS[color],
                    "cell": (row, col), "box": (cx - r, cy - r, cx + r, cy + r)})
  return objects, int(rng.integers(30, 91))


def _render(objects: list[dict], background: int, image_size: int) -> np.ndarray:
  image = Image.new("RGB", (image_size, image_size), (background,) * 3)
  draw = ImageDraw.Draw(image)
  for o in objects:
    x0, y0, x1, y1 = o["box"]
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if o["shape"] == "circle":
      draw.ellipse(o["box"], fill=o["rgb"])
    elif o["shape"] == "square":  # a little inside the box: similar visual weight to the circle
      h = 0.85 * r
      draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=o["rgb"])
    else:
      draw.polygon([(cx + r * x, cy + r * y) for x, y in _POLYGONS[o["shape"]]], fill=o["rgb"])
  return np.array(image, dtype=np.uint8)


def _relation(rng: np.random.Generator, a: dict, b: dict) -> str:
  """A relation of a to b that holds; diagonal neighbours get either the horizontal or vertical."""
  (ra, ca), (rb, cb) = a["cell"], b["cell"]
  true = ([] if ca == cb else ["left" if ca < cb else "right"]) + (
      [] if ra == rb else ["above" if ra < rb else "below"])
  return _pick(rng, true)


def _clauses(rng: np.random.Generator, objects: list[dict]) -> list[tuple[int, str, int, str, str]]:
  """(subject, relation, object, subject article, object article): 0 rel 1 [, and 2 rel 0|1]."""
  n = len(objects)
  clauses = [(0, _relation(rng, objects[0], objects[1]), 1, "a", "a")] if n > 1 else []
  if n > 2:
    k = int(rng.integers(2))
    clauses.append((2, _relation(rng, objects[2], objects[k]), k, "a", "the"))
  return clauses


# ----------------------------------------------------------------------------------------------
# Text.
# ----------------------------------------------------------------------------------------------
def _words(rng: np.random.Generator, obj: dict, mention_size: bool, synonyms: bool) -> dict:
  words = {"size": obj["size"] if mention_size else None, "color": obj["color"],
           "shape": obj["shape"]}
  if synonyms:  # every word replaced, so a synonym paraphrase always differs from the caption
    words["color"] = _pick(rng, COLOR_SYNONYMS[obj["color"]])
    words["shape"] = _pick(rng, SHAPE_SYNONYMS[obj["shape"]])
    if mention_size:
      words["size"] = _pick(rng, SIZE_SYNONYMS[obj["size"]])
  return words


def _with_article(article: str | None, phrase: str) -> str:
  if article == "a" and phrase[0] in "aeiou":
    article = "an"
  return f"{article} {phrase}" if article else phrase


def _np(words: dict, article: str | None) -> str:
  return _with_article(article, " ".join(w for w in (words["size"], words["color"],
                                                     words["shape"]) if w))


def _negated_np(rng: np.random.Generator, words: dict) -> str:
  """The object with its colour or its shape denied: false because both are unique in a scene."""
  size = f"{words['size']} " if words["size"] else ""
  if rng.random() < 0.5:
    return _with_article("a", f"{size}{words['shape']} that is not {words['color']}")
  return _with_article("a", f"{size}{words['color']} shape that is not "
                       + _with_article("a", words["shape"]))


def _relation_text(rng: np.random.Generator, rel: str, synonyms: bool) -> str:
  if synonyms and rng.random() < 0.5:
    return _pick(rng, RELATION_SYNONYMS[rel])
  return _RELATION_TEXT[rel]


def _caption(words: list[dict], clauses: list) -> str:
  if not clauses:
    return _np(words[0], "a")
  return ", and ".join(f"{_np(words[i], ai)} {_RELATION_TEXT[rel]} {_np(words[j], aj)}"
                       for i, rel, j, ai, aj in clauses)


def _paraphrase(rng: np.random.Generator, objects: list[dict], mention: list[bool],
                clauses: list) -> str:
  form = _pick(rng, PARAPHRASE_FORMS)
  syn = form == "synonym" or rng.random() < _SYNONYM_PROB
  words = [_words(rng, o, m, syn) for o, m in zip(objects, mention)]
  if not clauses:  # one object: no relation to reorder, so reorder its attributes instead
    w = words[0]
    size = f"{w['size']} " if w["size"] else ""
    return {"reorder": _with_article("a", f"{size}{w['shape']} that is {w['color']}"),
            "relative": f"there is {_np(w, 'a')} in the picture",
            "possessive": f"the picture has {_np(w, 'a')} in it",
            "synonym": _np(w, "a")}[form]
  parts = []
  for c, (i, rel, j, ai, aj) in enumerate(clauses):
    subj, obj = _np(words[i], ai), _np(words[j], aj)
    if form == "reorder":
      parts.append(f"{obj} {_relation_text(rng, _INVERSE[rel], syn)} {subj}")
    elif form == "relative":
      lead = "there is " if c == 0 else ""
      parts.append(f"{lead}{subj}, which is {_relation_text(rng, rel, syn)} {obj}")
    elif form == "possessive":
      parts.append(f"{obj} has {subj} {_POSSESSIVE[rel]}")
    else:
      parts.append(f"{subj} {_relation_text(rng, rel, syn)} {obj}")
  return ", and ".join(parts)


def _negation(rng: np.random.Generator, objects: list[dict], mention: list[bool],
              clauses: list) -> str:
  """Always false for the image: it denies a present object, attribute or relation."""
  n = len(objects)
  form = _pick(rng, NEGATION_FORMS if n > 1 else NEGATION_FORMS[:3])
  words = [_words(rng, o, m, rng.random() < _SYNONYM_PROB) for o, m in zip(objects, mention)]
  target = int(rng.integers(n))
  other = (target + 1 + int(rng.integers(n - 1))) % n if n > 1 else None
  if form == "absent":
    if other is not None and rng.random() < 0.5:
      return f"{_np(words[other], 'a')} and no {_np(words[target], None)}"
    return f"there is no {_np(words[target], None)} in the picture"
  if form == "without":
    head = "a picture" if other is None else _np(words[other], "a")
    return f"{head} without {_np(words[target], 'a')}"
  if form == "attribute":
    if not clauses:
      return _negated_np(rng, words[0])
    i, rel, j, _, _ = clauses[0]
    deny_subject = rng.random() < 0.5
    subj = _negated_np(rng, words[i]) if deny_subject else _np(words[i], "a")
    obj = _np(words[j], "a") if deny_subject else _negated_np(rng, words[j])
    return f"{subj} {_RELATION_TEXT[rel]} {obj}"
  i, rel, j, _, _ = _pick(rng, clauses)
  return f"{_np(words[i], 'the')} is not {_relation_text(rng, rel, True)} {_np(words[j], 'the')}"


# ----------------------------------------------------------------------------------------------
# The source.
# ----------------------------------------------------------------------------------------------
class ShapesSource:
  """grain-compatible random-access source of shapes triples (implements __len__, __getitem__)."""

  def __init__(self, *, split: str = "train", size: int | None = 10_000, seed: int = 0,
               image_size: int = 64):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if size is not None and not (isinstance(size, (int, np.integer)) and 0 < size <= _INFINITE):
      raise ValueError(f"size must be None or an int in [1, {_INFINITE}], got {size!r}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not (isinstance(image_size, (int, np.integer)) and image_size >= 24):
      raise ValueError(f"image_size must be an int >= 24, got {image_size!r}")
    self.split, self.size, self.seed, self.image_size = split, size, int(seed), int(image_size)
    self._stream = _STREAMS[split]

  def __len__(self) -> int:
    return _INFINITE if self.size is None else int(self.size)

  def __repr__(self) -> str:
    return (f"ShapesSource(split={self.split!r}, size={self.size}, seed={self.seed}, "
            f"image_size={self.image_size})")

  def _rng(self, index: int) -> np.random.Generator:
    # Negative indices are rejected rather than wrapped: an "infinite" source has no end to count
    # from, and a sampler producing one has a bug worth hearing about.
    if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
      raise IndexError(f"index {index!r} out of range for {self!r}")
    return np.random.default_rng([self.seed, self._stream, int(index)])

  def scene(self, index: int) -> list[dict]:
    """The objects of item `index`: color, shape, size, rgb, cell (row, col), box (x0, y0, x1, y1).

    The box is in pixels and bounds the drawn object; captions list objects in this order.
    """
    return _layout(self._rng(index), self.split, self.image_size)[0]

  def __getitem__(self, index: int) -> dict:
    return self._item(index, render=True)

  def metadata(self, index: int) -> dict:
    """Item `index` without its image (nothing drawn): what a cached image embedding needs."""
    return self._item(index, render=False)

  def _item(self, index: int, render: bool) -> dict:
    rng = self._rng(index)
    objects, background = _layout(rng, self.split, self.image_size)
    clauses = _clauses(rng, objects)
    mention = [bool(rng.random() < _SIZE_MENTION_PROB) for _ in objects]
    ident = f"shapes-{self.split}-{int(index):09d}"
    item = {
        "caption": _caption([_words(rng, o, m, False) for o, m in zip(objects, mention)], clauses),
        "paraphrase": _paraphrase(rng, objects, mention, clauses),
        "negation": _negation(rng, objects, mention, clauses),
        "id": ident,
        "image_key": ident,
    }
    return {"image": _render(objects, background, self.image_size), **item} if render else item
