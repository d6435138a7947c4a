"""A lookup tool over a local corpus, ranked with BM25.

BM25 (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25
and Beyond", 2009) scores a document d for a query q as

    sum over terms t of q:  idf(t) * tf(t,d) * (k1 + 1)
                            / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))

with idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)), the non-negative
idf that Lucene uses. Tokens are lower-cased runs of letters and digits.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple


class Hit(NamedTuple):
    id: str
    score: float
    text: str


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class Index(NamedTuple):
    """A BM25 index: document ids, texts, term counts, document frequencies."""

    ids: list[str]
    texts: list[str]
    tf: list[Counter]
    df: Counter
    avgdl: float


def build_index(docs: Sequence[str] | Sequence[tuple[str, str]]) -> Index:
    """An index over texts (ids "0", "1", ...) or over (id, text) pairs."""
    pairs = [(str(i), d) if isinstance(d, str) else d for i, d in enumerate(docs)]
    tf = [Counter(tokenize(text)) for _, text in pairs]
    df = Counter(t for counts in tf for t in counts)
    avgdl = sum(sum(c.values()) for c in tf) / max(len(tf), 1)
    return Index([i for i, _ in pairs], [t for _, t in pairs], tf, df, avgdl)


def load_jsonl(path: str | Path, id_key: str = "id", text_key: str = "text") -> Index:
    """An index over a JSONL file, one `{"id": ..., "text": ...}` object a line."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return build_index([(str(r[id_key]), r[text_key]) for r in rows])


def bm25_scores(index: Index, query: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """The BM25 score of every document of `index` for `query`."""
    n = len(index.ids)
    scores = []
    for counts in index.tf:
        dl = sum(counts.values())
        s = 0.0
        for t in tokenize(query):
            f = counts.get(t, 0)
            if f:
                idf = math.log(1 + (n - index.df[t] + 0.5) / (index.df[t] + 0.5))
                s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / index.avgdl))
        scores.append(s)
    return scores


def search(index: Index, query: str, k: int = 3) -> list[Hit]:
    """The top `k` documents with a positive score, best first (ties by corpus order)."""
    scores = bm25_scores(index, query)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [Hit(index.ids[i], scores[i], index.texts[i]) for i in order[:k] if scores[i] > 0]


def make_search_tool(index: Index, default_k: int = 3) -> Callable[..., str]:
    """A `search(query, k)` tool over `index` whose output lists `[id] text` lines."""

    def search_corpus(query: str, k: int = default_k) -> str:
        """Search the local corpus for documents matching a query.

        Args:
            query: Keywords to look for.
            k: How many documents to return at most.
        """
        hits = search(index, query, k)
        return "\n".join(f"[{h.id}] {h.text}" for h in hits) if hits else "no results"

    return search_corpus
