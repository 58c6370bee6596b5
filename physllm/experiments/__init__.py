"""Experiments over every architecture (layer 7: above training and bench, below reporting):
the leaderboard (:mod:`physllm.experiments.leaderboard`)."""
