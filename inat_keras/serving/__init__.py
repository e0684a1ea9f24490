"""Using a trained checkpoint outside training: explain it, compare it with another run, export it, and
predict folders of images with it. Imports training, data, models and analysis."""
