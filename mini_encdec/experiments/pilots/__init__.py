"""Pilots of the study: small runs that fix a choice of the protocol (a budget, a task,
a learning rate) on the validation plays before any confirmatory run."""
