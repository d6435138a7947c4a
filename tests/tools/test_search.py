import json
import math

from rl_lm.tools.search import bm25_scores, build_index, load_jsonl, make_search_tool, search

DOCS = [
    ("paris", "paris is the capital of france"),
    ("cats", "cats chase mice"),
    ("rome", "rome rome"),
]


def test_bm25_by_hand():
    # N = 3, avgdl = (6 + 3 + 2) / 3 = 11/3. "rome" is in 1 doc: idf = ln(1 + 2.5/1.5).
    # Doc "rome": tf = 2, |d| = 2, so the score is idf * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 6/11)).
    index = build_index(DOCS)
    idf = math.log(1 + 2.5 / 1.5)
    expected = idf * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 2 / (11 / 3)))
    assert bm25_scores(index, "rome") == [0.0, 0.0, expected]
    # "capital france": each in doc "paris" once, |d| = 6.
    per_term = idf * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 6 / (11 / 3)))
    assert math.isclose(bm25_scores(index, "Capital, France!")[0], 2 * per_term)


def test_top_k_with_ids():
    index = build_index(DOCS)
    hits = search(index, "rome cats", k=2)
    assert [h.id for h in hits] == ["rome", "cats"]
    assert search(index, "rome cats", k=1)[0].id == "rome"
    assert search(index, "nothing matches") == []


def test_jsonl_and_tool(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": t}) for i, t in DOCS) + "\n")
    tool = make_search_tool(load_jsonl(path))
    assert tool("capital of france", k=1) == "[paris] paris is the capital of france"
    assert tool("zebra") == "no results"
