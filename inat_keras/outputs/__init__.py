"""What a run leaves behind: its folder (config, split, history, checkpoints, metrics) and its W&B run."""
