"""Hyperparameter sweeps from a W&B sweep file: checked (spec), searched locally (local) or by W&B's agent
(online), started by launch, and turned into a decision (report). Imports training, never the CLI."""
