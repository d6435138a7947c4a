"""rl_lm: reinforcement-learning post-training of language models in JAX."""
