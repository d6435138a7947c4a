"""How the synthetic preference datasets are drawn (see `preference_tasks`).

Every row comes from numpy streams seeded by (config seed, purpose, split), so a
dataset is a pure function of its config: prompts (test prompts distinct, train
prompts drawn with replacement avoiding them), responses, then labels.

sort_pref responses come from `BEHAVIOUR`, a mixture of answer modes whose true
rewards range from 1 (sorted) through about 0.75 (slipped, verbose, half-sorted)
and 0.55 (copied) to about 0.2 (reversed, random), a mean of about 0.64. rps_pref
responses come from the reference: a class from `synthetic.rps_reference`, then a
word of that class from `synthetic.RPS_WORDS`.
"""

from __future__ import annotations

import numpy as np

from rl_lm.rewards import synthetic

# The behaviour policy of sort_pref: (mode, probability).
BEHAVIOUR = (
    ("sorted", 0.1),  # the answer
    ("slip", 0.25),  # the answer with one digit substituted, deleted, inserted or swapped
    ("verbose", 0.15),  # the answer followed by filler, e.g. "1358 done"
    ("bubble", 0.15),  # one bubble-sort pass over the prompt's digits
    ("copy", 0.15),  # the prompt's digits
    ("reverse", 0.05),  # the digits in decreasing order
    ("noise", 0.15),  # 1 to n + 4 random digits
)
_FILLERS = (" ok", " done", "!!", "...", " :)")


def _draw_prompts(draw, cfg) -> dict[str, list[str]]:
    """Distinct test prompts, then train prompts with replacement that avoid them."""
    test, seen = [], set()
    rng = np.random.default_rng([cfg.seed, 0])
    while len(test) < cfg.test_size:
        prompt = draw(rng)
        if prompt not in seen:
            seen.add(prompt)
            test.append(prompt)
    train, rng = [], np.random.default_rng([cfg.seed, 1])
    while len(train) < cfg.train_size:
        prompt = draw(rng)
        if prompt not in seen:
            train.append(prompt)
    return {"train": train, "test": test}


def _slip(rng: np.random.Generator, digits: str) -> str:
    """The sorted digits with one edit: a substitution, deletion, insertion or swap."""
    target, n = "".join(sorted(digits)), len(digits)
    i, edit = int(rng.integers(n)), int(rng.integers(4))
    if edit == 0:
        return target[:i] + str((int(target[i]) + 1 + rng.integers(9)) % 10) + target[i + 1 :]
    if edit == 1 and n > 1:
        return target[:i] + target[i + 1 :]
    if edit == 2 and i + 1 < n and target[i] != target[i + 1]:
        return target[:i] + target[i + 1] + target[i] + target[i + 2 :]
    return target[:i] + str(rng.integers(10)) + target[i:]


def _bubble(rng: np.random.Generator, digits: str) -> str:
    """One bubble-sort pass: a half-done sort."""
    del rng
    out = list(digits)
    for i in range(len(out) - 1):
        if out[i] > out[i + 1]:
            out[i], out[i + 1] = out[i + 1], out[i]
    return "".join(out)


_MODES = {
    "sorted": lambda rng, d: "".join(sorted(d)),
    "slip": _slip,
    "verbose": lambda rng, d: "".join(sorted(d)) + _FILLERS[rng.integers(len(_FILLERS))],
    "bubble": _bubble,
    "copy": lambda rng, d: d,
    "reverse": lambda rng, d: "".join(sorted(d, reverse=True)),
    "noise": lambda rng, d: "".join(map(str, rng.integers(10, size=rng.integers(1, len(d) + 5)))),
}


def behaviour_responses(rng: np.random.Generator, digits: list[str]) -> list[str]:
    """Draws of the mediocre sort_pref behaviour policy, one per prompt's digits."""
    names, probs = zip(*BEHAVIOUR, strict=True)
    modes = rng.choice(len(names), size=len(digits), p=probs)
    return [_MODES[names[m]](rng, d) for m, d in zip(modes, digits, strict=True)]


def _sort_split(cfg, prompts: list[str], split: int) -> list[dict]:
    rng = np.random.default_rng([cfg.seed, 2, ("sft", "pairs").index(cfg.kind), split])
    digits, answers = synthetic.parse_sort_prompts(prompts), synthetic.sort_target(prompts)
    if cfg.kind == "sft":
        responses = behaviour_responses(rng, digits)
        rewards = synthetic.sort_reward(responses, answers)
        return [
            {"prompt": p, "response": y, "answer": a, "reward": r}
            for p, y, a, r in zip(prompts, responses, answers, rewards, strict=True)
        ]
    first, second = behaviour_responses(rng, digits), behaviour_responses(rng, digits)
    for i, d in enumerate(digits):
        for _ in range(100):  # Identical responses would teach nothing.
            if second[i] != first[i]:
                break
            (second[i],) = behaviour_responses(rng, [d])
    r_a, r_b = synthetic.sort_reward(first, answers), synthetic.sort_reward(second, answers)
    p_a = synthetic.bradley_terry_probability(r_a, r_b, cfg.temperature)
    # Labels use their own stream, so the temperature changes labels only.
    a_wins = np.random.default_rng([cfg.seed, 3, split]).random(len(prompts)) < p_a
    return [
        {
            "prompt": p,
            "chosen": ya if wins else yb,
            "rejected": yb if wins else ya,
            "answer": a,
            "chosen_reward": ra if wins else rb,
            "rejected_reward": rb if wins else ra,
        }
        for p, a, ya, yb, ra, rb, wins in zip(
            prompts, answers, first, second, r_a, r_b, a_wins, strict=True
        )
    ]


def _sample_classes(rng: np.random.Generator, probs_Nx3: np.ndarray) -> np.ndarray:
    cdf_Nx3 = np.cumsum(probs_Nx3, axis=1)
    u_N = rng.random(len(probs_Nx3)) * cdf_Nx3[:, -1]
    return (u_N[:, None] >= cdf_Nx3[:, :-1]).sum(axis=1)


def _rps_words(rng: np.random.Generator, classes_N: np.ndarray) -> list[str]:
    words_N = rng.choice(
        len(synthetic.RPS_WORD_PROBS), size=len(classes_N), p=synthetic.RPS_WORD_PROBS
    )
    return [synthetic.RPS_WORDS[c][w] for c, w in zip(classes_N, words_N, strict=True)]


def _rps_split(cfg, prompts: list[str], split: int) -> list[dict]:
    rng = np.random.default_rng([cfg.seed, 4, ("sft", "pairs").index(cfg.kind), split])
    ref_Nx3 = synthetic.rps_reference(prompts)
    first = _sample_classes(rng, ref_Nx3)
    if cfg.kind == "sft":
        responses = _rps_words(rng, first)
        return [{"prompt": p, "response": y} for p, y in zip(prompts, responses, strict=True)]
    other_Nx3 = np.where(np.arange(3)[None] == first[:, None], 0.0, ref_Nx3)
    a, b = _rps_words(rng, first), _rps_words(rng, _sample_classes(rng, other_Nx3))
    p_a = synthetic.intransitive_preference(prompts, a, b)
    a_wins = rng.random(len(prompts)) < p_a
    return [
        {
            "prompt": p,
            "chosen": ya if wins else yb,
            "rejected": yb if wins else ya,
            "preference": pa if wins else 1 - pa,
        }
        for p, ya, yb, pa, wins in zip(prompts, a, b, p_a, a_wins, strict=True)
    ]


def make_examples(task: str, config) -> dict[str, list[dict]]:
    """The rows of both splits of a dataset, deterministic given its config.

    Args:
        task: "sort_pref" or "rps_pref".
        config: its `preference_tasks` config (e.g. `task_config(task, kind="pairs")`).

    Returns:
        {"train": rows, "test": rows}, each row a dict of the dataset's features.
    """
    if task == "sort_pref":
        lo, hi = config.min_digits, config.max_digits

        def draw(rng):
            return synthetic.sort_prompt(
                "".join(map(str, rng.integers(10, size=rng.integers(lo, hi + 1))))
            )

        split_fn = _sort_split
    elif task == "rps_pref":
        strengths = config.strengths

        def draw(rng):
            fav, s, nonce = rng.integers(3), rng.integers(len(strengths)), rng.integers(10_000)
            return synthetic.rps_prompt(synthetic.RPS_CLASSES[fav], strengths[s], int(nonce))

        split_fn = _rps_split
    else:
        raise ValueError(f"unknown preference task {task!r}; known: sort_pref, rps_pref.")
    prompts = _draw_prompts(draw, config)
    return {s: split_fn(config, prompts[s], i) for i, s in enumerate(("train", "test"))}
