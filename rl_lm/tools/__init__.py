"""Tools a policy can call during a rollout: schemas, call parsing, and the shipped tools."""
