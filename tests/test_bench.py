import json
import math

import keras
import numpy as np
import pytest
from PIL import Image

from inat_keras.perf.benchmark import BenchOptions, run_bench, summary
from inat_keras.cli import main
from inat_keras.data.cache import CACHE_HOME
from inat_keras.data.synthetic import cached_photo_folder


@pytest.fixture
def tiny(tiny_cnn_options):
    """tiny(**options) -> BenchOptions: two steps, twice, of the tiny CNN."""

    def bench_options(**extra) -> BenchOptions:
        values = tiny_cnn_options
        options = {"image_size": values["image_size"], "batch_size": 4, "steps": 2, "repeats": 2, "matmul_size": 256}
        overrides = {k: values[k] for k in ("filters", "kernel_sizes", "dense_units")}
        return BenchOptions(**{**options, **extra}, overrides=overrides)

    return bench_options


def test_bench_measures_steps_pipeline_and_epochs(image_folder, tiny):
    report = run_bench(tiny(data_dir=str(image_folder)))
    assert report["backend"] == keras.backend.backend() and report["cpu_count"] >= 1
    flops = report["forward_gflops_per_image"] * 1e9
    assert flops == 2 * (32 * 32 * 3 * 4 + (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2) * 4 * 4 + 4 * 8 + 8 * 10)  # 10 classes
    for part, flops_per_image in (("train", 3 * flops), ("infer", flops)):
        r = report[part]
        assert r["images_per_second"] > 0 and r["compile_seconds"] > 0 and r["cpu_seconds_per_step"] > 0
        assert len(r["repeats_images_per_second"]) == 2
        assert math.isclose(r["gflops_per_second"], r["images_per_second"] * flops_per_image / 1e9)
    assert report["train_images"] == 24 and report["val_images"] == 6  # 30 images, 20% held out
    kinds = ("first_pass", "cached", "augmented", "device_feed")
    assert all(report["pipeline"][f"{k}_{unit}"] > 0 for k in kinds for unit in ("images_per_second", "cpu_ms_per_image"))
    assert 0 < report["fit"]["epoch_seconds"] and 0 < report["fit"]["first_epoch_seconds"]
    assert report["fit"]["train_images_per_second"] > report["fit"]["images_per_second"]  # validation left out
    assert math.isclose(report["fit"]["fraction_of_train_step"],
                        report["fit"]["train_images_per_second"] / report["train"]["images_per_second"])  # fmt: skip
    assert report["matmul"]["size"] == 256 and report["matmul"]["gflops_per_second"] > 0
    assert math.isclose(report["train"]["fraction_of_matmul_rate"],
                        report["train"]["gflops_per_second"] / report["matmul"]["gflops_per_second"])  # fmt: skip
    assert "mfu" not in report["train"], "no peak given"
    assert "train" in summary(report) and "pipeline" in summary(report) and "matmul rate" in summary(report)


def test_bench_in_mixed_precision_reports_mfu_against_the_given_peak(tiny):
    report = run_bench(tiny(parts="train", precision="mixed_bfloat16", peak_tflops=0.5))
    assert report["precision"] == "mixed_bfloat16"
    assert math.isclose(report["train"]["mfu"], report["train"]["gflops_per_second"] / 500)
    assert keras.config.dtype_policy().name == "float32"
    assert "MFU" in summary(report)


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--image-size", "94", "--batch-size", "2", "--steps", "1", "--repeats", "1", "--parts", "infer"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "cnn" and report["image_size"] == 94 and "train" not in report
    assert report["infer"]["images_per_second"] > 0
    assert report["params"] == 303_114  # the default CNN (64x5, 3x3) at 94x94
    assert "infer" in capsys.readouterr().out


def test_generated_photos_look_like_inaturalist_jpegs():
    root = cached_photo_folder(10)
    assert root.parent == CACHE_HOME / "synthetic" and cached_photo_folder(10) == root
    files = sorted((root / "train").rglob("*.jpg"))
    assert len(files) == 10 and len(list((root / "val").rglob("*.jpg"))) == 2
    assert len({f.parent.name for f in files}) == 2
    assert all(60_000 < f.stat().st_size < 200_000 for f in files)
    pixels = np.asarray(Image.open(files[0]), dtype=np.float32)
    assert pixels.shape == (600, 800, 3)
    assert pixels.std() > 15 and np.abs(np.diff(pixels, axis=1)).mean() > 2  # texture, not flat colour
