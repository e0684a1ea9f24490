"""The networks: the study's 5-block CNN, EfficientNetV2-S with a new head, the layers they share, and the
fine-tuning strategies (which units train in which stage). Imports config and errors, never data or training."""
