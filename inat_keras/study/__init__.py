"""The whole study as one resumable command: sweep, retrain, test, the fine-tuning strategies, and the
report that puts the study's published numbers beside ours. Imports every other folder."""
