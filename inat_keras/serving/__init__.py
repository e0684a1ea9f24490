"""Using a trained checkpoint outside training: evaluate it, explain it, compare it with another run, export it, and
predict folders of images with it. Imports inference, outputs, data, models and analysis; never training."""
