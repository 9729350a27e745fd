"""The word side of the route classifier: how much a turn's words are the words of a route's examples.

A small sentence-embedding model (all-MiniLM-L6-v2 and its kind) places a prompt mostly by its
subject: "audit log", "retry", "database" pull a prompt towards the route whose examples talk about
that subject, whatever is asked. The words that say what kind of work it is ("design", "plan",
"fix", "document", "across every service", "run ... and commit") are few and weigh little in a
mean-pooled vector. A TF-IDF score against each route's examples weighs exactly those words: they
recur among one route's examples and rarely elsewhere. The classifier adds it to the embedding
score (``routing.lexical_weight``), the way hybrid dense and sparse retrieval does.

Built from the route examples and descriptions alone, in pure Python (no model, no download): each
route is one document, the concatenation of its examples and its description (the description
counted ``description_weight`` times, as in the centroid); idf counts examples. Scoring a turn
costs a few dictionary lookups per word.

A request says its kind of work first: "Design ...", "Plan ...", "Document ...", "Run ... and
commit". The first ``LEAD_WORDS`` words of a turn (stop words aside) therefore count
``LEAD_BOOST`` times more. The boost, ``routing.lexical_weight`` and ``routing.description_weight``
were chosen by cross-validation on the route examples (``benchmarks/routing.py`` prints it): the
boost gains in every setting, the two weights sit in the middle of a plateau.
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z][a-z0-9_]+")
# Words that say nothing about the kind of work (kept short: idf already discounts common words).
STOP_WORDS = frozenset((
    "a", "an", "the", "to", "of", "in", "on", "for", "and", "or", "with", "this", "that", "it", "is", "are",
    "be", "we", "our", "my", "me", "i", "you", "your", "can", "could", "please", "how", "what", "from", "by",
    "at", "as", "do", "does", "into"))
_SUFFIXES = ("ing", "ed", "es", "s")
LEAD_WORDS = 2  # the first words of a turn (after stop words) that usually name the kind of work
LEAD_BOOST = 2  # how many extra times each of them counts


def stem(word: str) -> str:
    """A crude suffix cut, so "plan", "plans" and "planning" count as one word."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            doubled = len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiousl"
            if suffix in ("ing", "ed") and doubled:
                word = word[:-1]  # planning -> plann -> plan (but "installed" -> "install")
            return word
    return word


def words(text: str) -> list[str]:
    return [w for w in (stem(m) for m in _WORD.findall(text.lower())) if w not in STOP_WORDS]


class LexicalScorer:
    """TF-IDF cosine of a text with each route's examples taken together."""

    def __init__(self, examples: dict[str, list[str]], descriptions: dict[str, str] | None = None,
                 description_weight: int = 0):
        """*examples*: route name -> its example prompts (in the order routes are listed);
        *descriptions*: route name -> its one-line description, counted *description_weight* times."""
        self.routes = list(examples)
        # A description is written to define its route: it joins the route's examples.
        described = {route: text for route, text in (descriptions or {}).items() if text}
        examples = {route: texts + [described[route]] * description_weight if route in described else texts
                    for route, texts in examples.items()}
        document_frequency: Counter[str] = Counter()
        counts: list[Counter[str]] = []
        total = 0
        for route in self.routes:
            route_counts: Counter[str] = Counter()
            for example in examples[route]:
                seen = set(words(example))
                document_frequency.update(seen)
                route_counts.update(seen)
                total += 1
            counts.append(route_counts)
        self.idf = {w: math.log((total + 1) / (n + 1)) + 1 for w, n in document_frequency.items()}
        self.vectors: list[dict[str, float]] = []
        for route_counts in counts:
            length = sum(route_counts.values()) or 1
            vector = {w: n / length * self.idf[w] for w, n in route_counts.items()}
            norm = math.sqrt(sum(x * x for x in vector.values())) or 1.0
            self.vectors.append({w: x / norm for w, x in vector.items()})

    def scores(self, text: str) -> list[float]:
        """One cosine in [0, 1] per route; all 0 when no word of *text* occurs in any example."""
        turn_words = words(text)
        query = Counter(w for w in turn_words if w in self.idf)
        for word in turn_words[:LEAD_WORDS]:
            if word in query:
                query[word] += LEAD_BOOST
        if not query:
            return [0.0] * len(self.routes)
        weights = {w: n * self.idf[w] for w, n in query.items()}
        norm = math.sqrt(sum(x * x for x in weights.values()))
        return [sum(x * vector.get(w, 0.0) for w, x in weights.items()) / norm for vector in self.vectors]
