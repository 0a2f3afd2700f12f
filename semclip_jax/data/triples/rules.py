"""A deterministic, offline `rules` backend: template negation and light paraphrase of captions.

For tests, dry runs and machines without a model. It reads no prompt, only the request's kind and
caption, and never returns the caption unchanged. What it does, in order:

Negation
  1. a caption that already negates loses its first negation ("is not" -> "is", "isn't" -> "is",
     "without" -> "with", "no" -> "a"/"some", "never" -> "always", "nothing" -> "something");
  2. else "not" goes after the first auxiliary ("is", "are", "was", "can", "will", ...);
  3. else the first verb from a small list of caption verbs (sit, stand, ride, hold, play, ...),
     in the present or an unambiguous past ("sat", not "parked", which is mostly a participle in
     captions), becomes "does/do/did not <verb>"; "has" becomes "does not have";
  4. else the caption is taken for a noun phrase: "A man riding a horse" -> "There is no man
     riding a horse" ("There are no" after "two", "several", ...);
  5. "It is not true that ..." only if all else left the text unchanged.

Paraphrase
  a sentence (one with an auxiliary or a listed verb) gets word-level synonyms (photo/picture,
  next to/beside, big/large, ...) and a trailing place phrase moved to the front ("A zebra is
  standing in an open field." -> "In an open field, a zebra is standing."); a noun phrase becomes
  "There is ..." / "There are ..." / "A picture of ..."; "In this picture, ..." if nothing applied.

Limits, honestly: no parser and no lexicon beyond the lists here. A finite verb missing from the
list makes step 4 treat a sentence as a noun phrase ("A poster depicts a cat" becomes the
ungrammatical "There is no poster depicts a cat"); subject-verb agreement is guessed from the
verb's form; negating the first auxiliary can negate a relative clause instead of the main one;
synonyms ignore word sense ("little league" becomes "small league"). The paraphrases are shallow
(word order and synonyms), so they teach far less than an LLM's; use this backend to test the
machinery, not to make training data you care about. The verifier answers by a count of
negation cues, not by meaning.
"""

from __future__ import annotations

import re

from semclip_jax.data.triples.protocol import Request
from semclip_jax.data.triples.cleaning import normalize

_AUX = re.compile(r"\b(?:is|are|was|were|am|can|could|will|would|should|must|may|might|"
                  r"(?:has|have|had)(?=\s+(?:been|\w+ed|\w+en)\b))\b", re.I)
_NEGATIONS = [  # (pattern, replacement) for step 1; the first that matches is undone
    (r"\b(ca)n't\b", r"\1n"), (r"\bwon't\b", "will"), (r"\b(\w+)n't\b", r"\1"),
    (r"\b(is|are|was|were|am|can|could|will|would|should|must|may|might|does|do|did|has|have)"
     r"\s+not\b", r"\1"), (r"\bnot\s+", ""), (r"\bwithout\b", "with"), (r"\bnever\b", "always"),
    (r"\bnobody\b", "somebody"), (r"\bnothing\b", "something"), (r"\bnone of\b", "all of"),
    (r"\bno(?=\s+\w+s\b)", "some"), (r"\bno\b", "a")]
_NEGATION_CUE = re.compile(r"\b(?:not|no|never|without|nobody|nothing|none)\b|n't\b", re.I)

# Verbs common in image captions (base forms). Surface forms are derived below.
_VERBS = ("sit stand walk run ride play hold look lie lay eat drink wait fly graze pose display "
          "race wear carry show contain sleep swim jump watch talk stare rest drive cross hang "
          "throw catch hit swing cut prepare cook read use take make move pull push lean perch "
          "feature surround cover fill sail skate ski surf climb kick serve pass hug kiss smile "
          "laugh stop travel head lead follow share enjoy hover dive float grow sell chase pet "
          "feed work stay get sing dance point reach line sport land taxi park face").split()
# Only past forms that cannot be participles: "a bus parked outside", "a cup held by" are noun
# phrases far more often than past-tense sentences in captions.
_PAST = {"sat": "sit", "stood": "stand", "ran": "run", "rode": "ride", "ate": "eat",
         "drank": "drink", "flew": "fly", "wore": "wear", "took": "take", "swam": "swim",
         "threw": "throw", "slept": "sleep", "sang": "sing", "grew": "grow", "drove": "drive"}
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its",
                "my", "our", "some", "several", "many", "few", "two", "three", "four", "five",
                "six", "seven", "eight", "nine", "ten", "one", "multiple", "various"}
_PREPOSITIONS = {"in", "on", "at", "of", "for", "with", "by", "from", "into", "onto", "near",
                 "under", "over", "behind", "beside", "across", "along", "around", "through",
                 "up", "down", "inside", "outside", "above", "below", "off"}
_PLURAL_STARTS = {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "some",
                  "several", "many", "few", "multiple", "various", "these", "those",
                  "people", "men", "women", "children", "kids"}
_QUANTIFIERS = re.compile(r"^(?:a few|a couple of|a pair of|lots of|a lot of|a number of)\s+", re.I)
_SYNONYMS = {"photo": "picture", "picture": "photo", "photograph": "picture", "image": "picture",
             "big": "large", "large": "big", "small": "little", "little": "small",
             "next to": "beside", "beside": "next to", "near": "close to", "close to": "near",
             "on top of": "atop", "atop": "on top of", "children": "kids", "kids": "children",
             "child": "kid", "kid": "child", "woman": "lady", "lady": "woman", "couch": "sofa",
             "sofa": "couch", "bike": "bicycle", "bicycle": "bike", "airplane": "aircraft",
             "television": "TV", "tv": "television", "ocean": "sea", "sea": "ocean",
             "street": "road", "road": "street", "a lot of": "many", "lots of": "many",
             "many": "lots of", "a couple of": "two", "a pair of": "two", "sitting": "seated",
             "automobile": "car", "cellphone": "mobile phone", "cell phone": "mobile phone",
             "watching": "looking at", "looking at": "watching", "several": "a number of"}
_SYNONYM = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SYNONYMS), key=len, reverse=True))
                      + r")\b", re.I)
_PLACE_WORDS = (r"in front of|next to|on top of|in|on|at|near|beside|behind|under|inside|outside|"
                r"across|along|by|over|above")
# The last place phrase of a sentence: a preposition, an article and at most four more words.
_PLACE = re.compile(rf"^(?P<head>.+)\s+(?P<place>(?:{_PLACE_WORDS})\s+(?:the|a|an|some|his|her|"
                    r"their|its)(?:\s+[\w'-]+){1,4}?)(?P<end>[.!?]*)$", re.I)
_CLAUSE = re.compile(r"\b(?:while|and|or|but|who|which|that|where|as|with|of)\b|,", re.I)


def _verb_forms() -> dict[str, tuple[str, str]]:
  """surface form -> (auxiliary, base form): "rides" -> ("does", "ride")."""
  forms: dict[str, tuple[str, str]] = {}
  for base in _VERBS:
    third = (base[:-1] + "ies" if base.endswith("y") and base[-2] not in "aeiou"
             else base + "es" if base.endswith(("s", "sh", "ch", "x", "z", "o")) else base + "s")
    forms.setdefault(third, ("does", base))
    forms.setdefault(base, ("do", base))
  forms.update({past: ("did", base) for past, base in _PAST.items()})
  forms.update({"has": ("does", "have"), "have": ("do", "have")})
  return forms


_VERB_FORMS = _verb_forms()


def _words(text: str) -> list[re.Match]:
  return list(re.finditer(r"[A-Za-z][\w'-]*", text))


def _finite_verb(text: str) -> re.Match | None:
  """The first listed verb form that is not first, nor after a determiner or preposition; a base
  form ("play", also a noun) only after a plural-looking subject ("people play", "dogs play")."""
  words = _words(text)
  for i, word in enumerate(words[1:], 1):
    form, before = word.group().lower(), words[i - 1].group().lower()
    if form not in _VERB_FORMS or before in _DETERMINERS | _PREPOSITIONS | {"to"}:
      continue
    if _VERB_FORMS[form][0] == "do" and not (before.endswith("s") or before in _PLURAL_STARTS):
      continue
    return word
  return None


def _lower_first(text: str) -> str:
  first = text.split(" ", 1)[0]
  if first == "I" or (len(first) > 1 and first.isupper()):
    return text  # an acronym or "I"
  return text[:1].lower() + text[1:]


def _is_sentence(text: str) -> bool:
  return bool(_AUX.search(text) or re.search(r"n't\b", text)) or _finite_verb(text) is not None


def _noun_phrase(text: str, positive: bool) -> str:
  """ "There is (no) ...", "There are (no) ..." or "A picture of ..." around a noun phrase."""
  first, _, rest = text.partition(" ")
  first = first.lower()
  plural = first in _PLURAL_STARTS
  quantifier = _QUANTIFIERS.match(text)
  if quantifier:  # "a few dogs": plural, and "no" replaces the whole quantifier
    first, rest, plural = "some", text[quantifier.end():], True
  if positive:
    body = _swap_synonyms(text)
    if first not in _DETERMINERS and not plural:
      return "A picture of " + _lower_first(body)
    return ("There are " if plural else "There is ") + _lower_first(body)
  if not rest or first not in _DETERMINERS | _PLURAL_STARTS or first in {"people", "men", "women",
                                                                      "children", "kids"}:
    rest = text  # "no" replaces the determiner or quantifier; a bare noun keeps its place
  return ("There are no " if plural else "There is no ") + _lower_first(rest)


def _finish(result: str, caption: str, fallback_prefix: str | None = None) -> str:
  """`result` in the caption's case; with `fallback_prefix`, a result that normalises to the
  caption itself is replaced by the prefix + the caption, so a rule never returns its input."""
  if fallback_prefix is not None and normalize(result) == normalize(caption):
    result = fallback_prefix + _lower_first(caption.strip())
  return result.upper() if caption.isupper() else result


def negate(caption: str) -> str:
  """A sentence that contradicts `caption` (see the module docstring for how, and its limits)."""
  text = caption.strip()
  if _NEGATION_CUE.search(text):
    for pattern, replacement in _NEGATIONS:
      result = re.sub(pattern, replacement, text, count=1, flags=re.I)
      if result != text:
        return _finish(re.sub(r"\s+", " ", result).strip(), caption)
  aux = _AUX.search(text)
  verb = _finite_verb(text)
  if aux and (verb is None or aux.start() <= verb.start()):
    result = f"{text[:aux.end()]} not{text[aux.end():]}"
  elif verb is not None:
    auxiliary, base = _VERB_FORMS[verb.group().lower()]
    result = f"{text[:verb.start()]}{auxiliary} not {base}{text[verb.end():]}"
  else:
    result = _noun_phrase(text, positive=False)
  return _finish(result, caption, fallback_prefix="It is not true that ")


def _swap_synonyms(text: str) -> str:
  def swap(match: re.Match) -> str:
    word, new = match.group(), _SYNONYMS[match.group().lower()]
    return new[:1].upper() + new[1:] if word[:1].isupper() else new
  return _SYNONYM.sub(swap, text)


def _front_place(text: str) -> str:
  """ "A zebra is standing in a field." -> "In a field, a zebra is standing." """
  match = _PLACE.match(text)
  if match is None or len(match.group("head").split()) < 2 or _CLAUSE.search(match.group("head")):
    return text  # only simple sentences: moving a phrase out of a clause can change its meaning
  place = match.group("place")
  if re.search(rf"\s(?:{_PLACE_WORDS})\s", place, re.I):
    return text
  return f"{place[:1].upper()}{place[1:]}, {_lower_first(match.group('head'))}{match.group('end')}"


def paraphrase(caption: str) -> str:
  """A sentence meaning what `caption` means, by shallow rewriting (see the module docstring)."""
  text = caption.strip()
  if _is_sentence(text):
    result = _front_place(_swap_synonyms(text))
    if normalize(result) == normalize(text) or result == text:
      result = "In this picture, " + _lower_first(text)
  else:
    result = _noun_phrase(text, positive=True)
  return _finish(result, caption, fallback_prefix="In this picture, ")


def _verdict(request: Request) -> str:
  """Paraphrase: the same parity of negation cues; negation: a different one."""
  cues = lambda text: len(_NEGATION_CUE.findall(text or "")) % 2
  same_polarity = cues(request.candidate) == cues(request.caption)
  differs = normalize(request.candidate or "") != normalize(request.caption)
  if request.kind == "verify_paraphrase":
    return "Yes" if differs and same_polarity else "No"
  return "Yes" if differs and (not same_polarity or "not true" in (request.candidate or "").lower()
                               or "there is no" in (request.candidate or "").lower()) else "No"


class RulesBackend:
  """The `Backend` of this module's templates; answers cost nothing, so none is cached."""
  name = "rules"
  model_id = "rules:v1"
  cacheable = False

  def complete(self, request: Request) -> str:
    if request.kind.startswith("verify_"):
      return _verdict(request)
    if request.kind.endswith("negation"):
      return negate(request.caption)
    return paraphrase(request.caption)
