"""Rewards for tool use: ToolRL's decomposed reward, ReTool's outcome, OTC's efficiency.

Pure Python over parsed calls (`rl_lm.tools.calls.ToolCall`) and answers. Each
function returns its terms separately, so every term can be logged on its own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rl_lm.tools.calls import ToolCall

Call = tuple[str, Mapping[str, Any]]


class ToolRLTerms(NamedTuple):
    """ToolRL's terms: format in {0, 1}, correctness in [-3, 3], total in [-3, 4]."""

    format: float
    name: float
    param: float
    value: float
    s_max: float
    correctness: float
    total: float


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _pair_terms(gt: Call, pred: Call) -> tuple[float, float]:
    """(parameter-name Jaccard, count of exactly matching values); 0 across tools."""
    if gt[0] != pred[0]:
        return 0.0, 0.0
    g, p = gt[1], pred[1]
    return _jaccard(set(g), set(p)), sum(1.0 for k in g if k in p and p[k] == g[k])


def _best_matching(gt: Sequence[Call], pred: Sequence[Call]) -> tuple[float, float]:
    """(r_param, r_value) of a one-to-one matching of `gt` with `pred` maximising their sum.

    Exhaustive over assignments, which is exact and cheap for the handful of
    calls a turn holds; past 7 calls on the smaller side it matches greedily.
    """
    if len(gt) <= len(pred):
        terms = lambda i, j: _pair_terms(gt[i], pred[j])
        size, other = len(gt), len(pred)
    else:
        terms = lambda i, j: _pair_terms(gt[j], pred[i])
        size, other = len(pred), len(gt)
    if size == 0:
        return 0.0, 0.0
    if size <= 7:
        perms = itertools.permutations(range(other), size)
    else:
        free, perm = list(range(other)), []
        for i in range(size):
            perm.append(max(free, key=lambda j: sum(terms(i, j))))
            free.remove(perm[-1])
        perms = [perm]
    best = max(
        ([terms(i, j) for i, j in enumerate(perm)] for perm in perms),
        key=lambda pairs: sum(a + b for a, b in pairs),
    )
    return sum(a for a, _ in best), sum(b for _, b in best)


def toolrl_reward(
    pred: Sequence[ToolCall | Call], gt: Sequence[Call], format_ok: bool
) -> ToolRLTerms:
    """ToolRL's decomposed reward (Qian et al. 2025, arXiv 2504.13958, Section 3, reward design).

    R = R_format + R_correct, with R_format in {0, 1} and

        r_name  = |N_G ∩ N_P| / |N_G ∪ N_P|           (Jaccard of the tool-name sets)
        r_param = Σ_(G_j, P_j) Jaccard(keys(G_j), keys(P_j))   over matched calls
        r_value = Σ_(G_j, P_j) Σ_(k ∈ keys(G_j)) 1[G_j[k] = P_j[k]]
        S_max   = 1 + |G| + Σ_j |keys(G_j)|
        R_correct = 6 * (r_name + r_param + r_value) / S_max - 3

    where the calls are matched one to one so as to maximise r_param + r_value;
    a pair of calls of different tools scores 0 (our reading: parameters of
    another tool are not a partial match). Two empty name sets have Jaccard 1,
    so answering without a call when none is expected earns the full 3.

    Args:
        pred: The model's calls; a ToolCall that failed to parse counts as no call.
        gt: The ground-truth calls as (name, arguments).
        format_ok: Whether the response has the required structure (tags in
            order, every call parsed); the caller's task decides what that is.
    """
    calls = [
        (c.name, c.arguments) if isinstance(c, ToolCall) else c
        for c in pred
        if not (isinstance(c, ToolCall) and c.error is not None)
    ]
    r_name = _jaccard({n for n, _ in gt}, {n for n, _ in calls})
    r_param, r_value = _best_matching(gt, calls)
    s_max = 1.0 + len(gt) + sum(len(a) for _, a in gt)
    correctness = 6.0 * (r_name + r_param + r_value) / s_max - 3.0
    fmt = 1.0 if format_ok else 0.0
    return ToolRLTerms(fmt, r_name, r_param, r_value, s_max, correctness, fmt + correctness)


def retool_reward(correct: bool) -> float:
    """ReTool's outcome reward (Feng et al. 2025, arXiv 2504.11536): +1 if correct, else -1."""
    return 1.0 if correct else -1.0


class OTCTerms(NamedTuple):
    """OTC-GRPO's terms for one sample: correctness in {0, 1}, r_tool in [0, 1]."""

    correctness: float
    optimal_calls: int
    r_tool: float
    efficiency: float
    total: float


def otc_r_tool(m: int, n: int, c: float = 1.0) -> float:
    """OTC-GRPO's tool reward for m calls when the group's fewest correct calls is n.

    From Wang et al. 2025, "OTC: Optimal Tool Calls via Reinforcement
    Learning" (arXiv 2504.14870v1, Section 3, the OTC-GRPO reward and its
    mapping f(m, n)):

        f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise
        r_tool  = 1                          if f(m, n) = n = 0
                  cos(m π / (2m + c))        if n = 0
                  sin(f(m, n) π / (2n))      otherwise

    so r_tool = 1 at m = n and falls towards 0 as m moves away from n either
    way; c smooths the decay when the optimum is no call at all.
    """
    if n == 0:
        return 1.0 if m == 0 else math.cos(m * math.pi / (2 * m + c))
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


def otc_grpo_rewards(
    calls: Sequence[int], correct: Sequence[bool], alpha: float = 1.0, c: float = 1.0
) -> list[OTCTerms]:
    """OTC-GRPO's terms for one group of samples of the same prompt.

    n is the fewest calls among the group's correct samples. `efficiency` is
    OTC's tool-integrated reward alpha * r_tool * r_phi, with r_phi the
    correctness in {0, 1}. OTC trains on that product alone, under which a
    correct answer reached with many calls scores about as little as a wrong
    one; `total` adds correctness to it, so a correct sample scores in
    [1, 1 + alpha] and an incorrect one 0: efficiency never outweighs being
    right. With no correct sample in the group n is
    undefined; we report r_tool against the group's fewest calls, and the
    efficiency term is 0 for every sample anyway.

    Args:
        calls: The number of tool calls of each sample.
        correct: Whether each sample's final answer is correct.
        alpha: The weight of the efficiency term.
        c: OTC's smoothing constant for the n = 0 branch.
    """
    right = [k for k, ok in zip(calls, correct, strict=True) if ok]
    n = min(right) if right else min(calls, default=0)
    out = []
    for m, ok in zip(calls, correct, strict=True):
        r_tool = otc_r_tool(m, n, c)
        score = 1.0 if ok else 0.0
        efficiency = alpha * r_tool * score
        out.append(OTCTerms(score, n, r_tool, efficiency, score + efficiency))
    return out
