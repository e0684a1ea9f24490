"""How fast things run: the benchmark command and the CPU process settings that its figures justified.
Imports every other folder; nothing imports it but the CLI."""

MODELS = ("cnn", "cnn-best", "efficientnet", "efficientnet-lite0")  # what `run.py bench --model` measures
PARTS = ("train", "infer", "pipeline", "fit", "matmul")  # and `--parts`
