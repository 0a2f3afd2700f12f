r"""Turning a chat model's answer into one clean sentence, or a reason to reject it.

Chat models wrap what was asked for: "Sure! Here is the paraphrase:\n\n"A dog runs."\n\nI swapped
...". `clean` keeps the sentence: it drops reasoning blocks (`<think>`), code fences,
acknowledgements, "Here is ...:" lines and labels ("Negation:"), numbering and bullets, markdown
emphasis and surrounding quotes, and everything after the first line and after as many sentences
as the caption has. Control characters (NUL, escape, DEL, ...: Unicode's Cc) are noise like the
rest: each becomes a space, so no output file gets one (a CSV reader stops at a NUL). `check` then
rejects what no cleaning can save, with a reason from a fixed vocabulary (so that counts add up
across runs). `parse_verdict` reads a verifier's yes/no.
"""

from __future__ import annotations

import re

# Rejection reasons: a fixed vocabulary, counted in the run's statistics.
EMPTY = "empty"
NO_WORDS = "no words"
REFUSAL = "refusal"
SAME = "same as caption"
TOO_LONG = "far longer than caption"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (Cc)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_FENCE = re.compile(r"```[a-z]*", re.I)
# "Sure!", "Certainly.", "Of course, ", "I'd be happy to help!" at the start of a line.
_ACK = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|alright|great|no problem|"
                  r"(?:i'?d be |i am |i'm )?(?:happy|glad) to help)\b[^.!:\n]{0,40}[.!:,]+\s*",
                  re.I)
# A short lead-in ending with ":" that talks about the answer ("Here is the negated caption:",
# "Paraphrase:", "**Answer**:"); a caption's own colon ("Photo: a dog") has none of these words.
_LEAD = re.compile(r"^([^:\n]{0,80}):\s*")
_LEAD_WORDS = re.compile(r"\b(?:here|paraphras\w*|negat\w*|sentence|caption|version|answer|output|"
                         r"result|response|rewrit\w*|contradict\w*|revised|new|option)\b", re.I)
_NUMBERING = re.compile(r"^(?:\d{1,2}[.)]|\(\d{1,2}\)|[-*•])\s+")
_EMPHASIS = re.compile(r"\*\*|__")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
# A trailing parenthetical that explains the edit: "(changed 'bed' to 'sofa')".
_NOTE = re.compile(r"\s*\((?=[^)]*\b(?:chang|replac|swap|negat|paraphras|original|note|kept|"
                   r"instead|rephras)\w*)[^)]*\)\s*([.!?]?)\s*$", re.I)
_SENTENCE_END = re.compile(r"([.!?]+[\"'”’)]*)\s+(?=[\"'“‘(]?[A-Z0-9])")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "no", "mt", "ft", "u.s"}
_REFUSAL = re.compile(r"^(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i'?m unable|i am unable|"
                      r"as an ai\b|i will not|i won'?t)", re.I)
_VERDICT = re.compile(r"\b(yes|no)\b", re.I)


def _strip_quotes(text: str) -> str:
  """Removes matching quotes around the whole text, also when punctuation follows the last one."""
  while len(text) >= 2 and text[0] in _QUOTES:
    close = _QUOTES[text[0]]
    body, tail = (text[1:-1], "") if text[-1] == close else (text[1:-2], text[-1])
    if text[-1] != close and not (text[-2] == close and tail in ".!?"):
      break
    if close in body and close not in "'’":  # '"a" and "b"' is not one quoted sentence
      break
    text = (body + tail).strip()
  return text


def _strip_lead(line: str) -> str:
  """Drops acknowledgements, lead-ins, numbering and emphasis at the start of one line."""
  previous = None
  while line != previous:
    previous = line
    line = _ACK.sub("", line)
    lead = _LEAD.match(line)
    if lead and _LEAD_WORDS.search(lead.group(1)) and len(lead.group(1).split()) <= 10:
      line = line[lead.end():]
    line = _NUMBERING.sub("", _EMPHASIS.sub("", line)).strip()
  return line


def count_sentences(text: str) -> int:
  return len(split_sentences(text))


def split_sentences(text: str) -> list[str]:
  """Sentences of `text`, not splitting after common abbreviations ("Mr.", "St.")."""
  pieces, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    words = text[start:match.start()].split()
    if match.group(1) == "." and words and words[-1].lower().rstrip(".") in _ABBREVIATIONS:
      continue
    pieces.append(text[start:match.end()].strip())
    start = match.end()
  pieces.append(text[start:].strip())
  return [p for p in pieces if p]


def clean(text: str, *, sentences: int = 1) -> str:
  """The answer in `text` as at most `sentences` sentences; "" if nothing is left."""
  text = _FENCE.sub("\n", _THINK.sub("", text or ""))
  # Line breaks first (splitlines knows the control characters that are some), then the rest.
  lines = (_strip_lead(_CONTROL.sub(" ", line).strip()) for line in text.splitlines())
  answer = next((line for line in lines if line), "")
  answer = _strip_quotes(answer)
  answer = " ".join(split_sentences(answer)[:max(1, sentences)])
  answer = _NOTE.sub(r"\1", answer)
  return re.sub(r"\s+", " ", _strip_quotes(answer)).strip()


def normalize(text: str) -> str:
  """Lower case, letters and digits only: what "the same sentence" means for `check`."""
  return " ".join(re.findall(r"[^\W_]+", text.lower()))


def check(candidate: str, caption: str, *, max_length_ratio: float = 2.0, slack: int = 20
          ) -> str | None:
  """None if `candidate` is usable for `caption`, else the reason to reject it."""
  if not candidate.strip():
    return EMPTY
  if not re.search(r"[^\W\d_]{2,}", candidate):
    return NO_WORDS
  if _REFUSAL.match(candidate):
    return REFUSAL
  if normalize(candidate) == normalize(caption):
    return SAME
  if len(candidate) > max_length_ratio * len(caption) + slack:
    return TOO_LONG
  return None


def parse_verdict(text: str) -> bool | None:
  """A verifier's answer: True for yes, False for no, None when it says neither."""
  match = _VERDICT.search(_THINK.sub("", text or ""))
  return None if match is None else match.group(1).lower() == "yes"
