"""Lexical guards: cheap checks that catch what embeddings miss.

Sentence embeddings place "cancel my subscription" and "don't cancel my
subscription" closer than most true paraphrases (DESIGN.md §7: negations,
swapped entities and changed numbers score above 0.95 often). Before a semantic
match is served, the two texts must agree on:

- **negation**: the same parity of negators (not, never, no, don't, without…);
- **numbers and dates**: the same numbers, number words, months, weekdays and years;
- **entities**: the same capitalised names and identifiers, in the same order
  (so "Paris to London" never matches "London to Paris");
- **opposites**: no word whose opposite is in the other text only (buy/sell,
  before/after, enable/disable…).

``compare`` returns the reasons a pair fails (empty when it passes) and a few
overlap features the verified mode's learner uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d+(?:[.,:/]\d+)*")

NEGATORS = frozenset(
    """not no never none nobody nothing nowhere neither nor without cannot cant
    dont doesnt didnt isnt arent wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt
    neednt aint stop""".split()
)

NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
    sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
    thousand million billion trillion first second third fourth fifth sixth seventh eighth ninth tenth
    half quarter double twice once dozen""".split()
)

DATE_WORDS = frozenset(
    """january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday
    sunday today tomorrow yesterday tonight weekend morning evening night""".split()
)

_OPPOSITES = [
    ("buy", "sell"), ("before", "after"), ("enable", "disable"), ("start", "stop"), ("open", "close"),
    ("increase", "decrease"), ("add", "remove"), ("accept", "reject"), ("win", "lose"), ("min", "max"),
    ("minimum", "maximum"), ("best", "worst"), ("more", "less"), ("most", "least"), ("above", "below"),
    ("upload", "download"), ("import", "export"), ("input", "output"), ("male", "female"), ("men", "women"),
    ("rich", "poor"), ("cheap", "expensive"), ("true", "false"), ("pros", "cons"), ("advantages", "disadvantages"),
    ("lowest", "highest"), ("cheapest", "most"), ("subscribe", "unsubscribe"), ("encrypt", "decrypt"),
    ("love", "hate"), ("good", "bad"), ("easy", "hard"), ("fast", "slow"), ("old", "new"), ("left", "right"),
    ("first", "last"), ("inside", "outside"), ("gain", "lose"), ("pass", "fail"), ("legal", "illegal"),
    ("possible", "impossible"), ("visible", "invisible"), ("lock", "unlock"), ("install", "uninstall"),
    ("north", "south"), ("east", "west"), ("hot", "cold"), ("up", "down"), ("in", "out"), ("on", "off"),
    ("to", "from"),
]
OPPOSITE: dict[str, set[str]] = {}
for _a, _b in _OPPOSITES:
    OPPOSITE.setdefault(_a, set()).add(_b)
    OPPOSITE.setdefault(_b, set()).add(_a)
# directional particles are too common to judge on their own: only used in the order check below
_WEAK_OPPOSITES = frozenset({"up", "down", "in", "out", "on", "off", "to", "from", "old", "new", "first", "last"})

STOPWORDS = frozenset(
    """a an the of to in on at for by with from and or but is are was were be been being am do does did
    i me my we our you your he she it its they them their this that these those there here what which who
    whom whose how why when where can could should would will shall may might must have has had
    as if so than then also just about into over under up out any some all each every very much many
    get got make made one ones s t""".split()
)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _norm(word: str) -> str:
    return word.lower().replace("’", "'").replace("'", "")


@dataclass(slots=True, frozen=True)
class Comparison:
    """The guard verdict and overlap features of two texts."""

    reasons: tuple[str, ...]
    jaccard: float  # content-word overlap
    diff_words: int  # content words in one text only
    length_ratio: float  # shorter / longer, in words
    question_word_differs: bool = False  # "how do I…" vs "why do I…"

    @property
    def passed(self) -> bool:
        return not self.reasons


def _numbers(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        low = _norm(token)
        if token[0].isdigit():
            out.append(token.replace(",", ""))
        elif low in NUMBER_WORDS or low in DATE_WORDS:
            out.append(low)
    return out


def _entities(tokens: list[str]) -> list[str]:
    """Capitalised words not at the start of a sentence, acronyms, and words with digits."""
    out = []
    sentence_start = True
    for token in tokens:
        low = _norm(token)
        is_entity = (
            (token[0].isupper() and not sentence_start and low not in STOPWORDS)
            or (len(token) > 1 and token.isupper() and low not in STOPWORDS)
            or (any(c.isdigit() for c in token) and any(c.isalpha() for c in token))
        )
        if is_entity:
            out.append(low)
        sentence_start = False
    return out


def _negations(lowered: list[str]) -> int:
    count = 0
    for word in lowered:
        if word in NEGATORS or word.endswith("nt") and word[:-2] in {"do", "does", "did", "is", "are", "was", "were", "wo", "would", "should", "could", "has", "have", "had", "ca", "must", "need"}:
            count += 1
    return count


def compare(a: str, b: str) -> Comparison:
    """Do ``a`` and ``b`` agree on negation, numbers, entities and opposites? Plus overlap features."""
    ta, tb = words(a), words(b)
    la, lb = [_norm(t) for t in ta], [_norm(t) for t in tb]
    sa, sb = set(la), set(lb)
    reasons: list[str] = []
    if _negations(la) % 2 != _negations(lb) % 2:
        reasons.append("negation")
    if sorted(_numbers(ta)) != sorted(_numbers(tb)):
        reasons.append("numbers")
    ea, eb = _entities(ta), _entities(tb)
    # an entity of one text must appear (in any case) in the other
    if any(e not in sb for e in ea) or any(e not in sa for e in eb):
        reasons.append("entities")
    else:
        # same entities, but in another order: "Paris to London" vs "London to Paris"
        oa = [w for w in la if w in set(ea) | set(eb)]
        ob = [w for w in lb if w in set(ea) | set(eb)]
        if _dedupe(oa) != _dedupe(ob):
            reasons.append("entity order")
    only_a, only_b = sa - sb, sb - sa
    for word in only_a:
        opposite = OPPOSITE.get(word)
        if opposite and word not in _WEAK_OPPOSITES and opposite & only_b:
            reasons.append("opposites")
            break
    ca, cb = sa - STOPWORDS, sb - STOPWORDS
    union = ca | cb
    jaccard = len(ca & cb) / len(union) if union else 1.0
    longer = max(len(la), len(lb)) or 1
    return Comparison(
        tuple(reasons), jaccard, len(ca ^ cb), min(len(la), len(lb)) / longer, _question_word(la) != _question_word(lb)
    )


_QUESTION_WORDS = frozenset("what why how when where who whom whose which".split())


def _question_word(lowered: list[str]) -> str:
    for word in lowered:
        if word in _QUESTION_WORDS:
            return word
    return ""


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
