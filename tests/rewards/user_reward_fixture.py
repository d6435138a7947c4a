"""User reward functions for tests/rewards/test_user_rewards.py, imported by path."""

import math

NOT_A_FUNCTION = 3


def short(prompts, responses, answers):
    """1.0 for a response of at most 2 characters."""
    return [float(len(r) <= 2) for r in responses]


def echoes_prompt(prompts, responses, answers):
    """1.0 where the response repeats the prompt's last word (prompts reach the function)."""
    pairs = zip(prompts, responses, strict=True)
    return [float(bool(p.split()) and p.split()[-1] in r) for p, r in pairs]


def one_too_many(prompts, responses, answers):
    return [0.0] * (len(responses) + 1)


def nan_at_runtime(prompts, responses, answers):
    """Fine on the probe batch (3 rows), NaN for the response "nan" later."""
    return [math.nan if r == "nan" else 0.0 for r in responses]


def always_nan(prompts, responses, answers):
    return [math.nan] * len(responses)


def raises(prompts, responses, answers):
    raise KeyError("metadata")


def not_numbers(prompts, responses, answers):
    return ["high"] * len(responses)


CALLS = []  # (prompts, responses, answers) of each `recorded` call


def recorded(prompts, responses, answers):
    """len(prompt) % 3, with its inputs kept in CALLS."""
    CALLS.append((list(prompts), list(responses), list(answers)))
    return [float(len(p) % 3) for p in prompts]
