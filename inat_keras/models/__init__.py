"""The networks: the study's 5-block CNN, the fine-tuning model (EfficientNetV2-S from keras-cv or EfficientNet-Lite0
with real ImageNet weights, backbones as data in backbones.py) with a new head, the layers they share, and the
fine-tuning strategies (which units train in which stage). Imports config and errors, never data or training."""
