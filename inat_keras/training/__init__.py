"""Running a training job: its run folder, the staged fit loop and callbacks, W&B tracking, where it
computes (distribution), and the evaluation of a model or a saved checkpoint. Imports data and models."""
