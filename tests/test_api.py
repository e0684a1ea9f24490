"""The Python API as a notebook user meets it: a fast import that loads no framework, a config trained, the run's
model loaded with plain `keras.models.load_model`, images predicted, the checkpoint evaluated."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import inat_keras
from inat_keras.errors import ConfigError

pytestmark = pytest.mark.backend_independent  # the Python API over the commands; each backend's training is tested elsewhere

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"blue": (30, 40, 200), "green": (30, 160, 40), "red": (180, 30, 30)}


def colour_folder(root: Path) -> Path:
    """root/train|val/<colour>/*.png: 6 training and 2 test images per class, a colour plus seeded noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 10, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_importing_the_package_loads_no_framework():
    loaded = python("import sys, inat_keras; print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax', 'wandb'}))")
    assert loaded == "[]"
    assert set(inat_keras.API) <= set(dir(inat_keras))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = colour_folder(root / "data")
    config = inat_keras.load_config("scratch", None, data_dir=str(data), output_dir=str(root / "run"), image_size=32,
                                    filters=[4] * 5, kernel_sizes=[1] * 5, dense_units=8, batch_size=8, epochs=1,
                                    learning_rate=0.01, wandb="disabled")  # fmt: skip
    run_dir, metrics = inat_keras.train(config)
    return run_dir, metrics, data


def test_a_config_from_python_is_the_commands_and_trains(trained):
    run_dir, metrics, _ = trained
    assert (run_dir / "model.keras").is_file() and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["class_names"] == ["blue", "green", "red"]
    with pytest.raises(ConfigError, match="kind must be one of scratch, finetune"):
        inat_keras.load_config("resnet")
    with pytest.raises(ConfigError, match="learning_rate must be a positive finite number"):
        inat_keras.load_config("scratch", learning_rate=-1.0)
    demo = inat_keras.load_config("finetune", demo=True)
    assert demo.backbone == "efficientnet_lite0" and demo.weights == "imagenet"  # configs/finetune.yaml's demo section


def test_keras_loads_a_runs_model_after_a_bare_import(trained):
    """In a fresh process, as in a notebook: `import inat_keras` is enough for Keras to know the project's layers."""
    run_dir, _, data = trained
    image = sorted((data / "val" / "red").iterdir())[0]
    code = (
        "import inat_keras, keras, numpy as np; from PIL import Image; "
        f"model = keras.models.load_model({str(run_dir / 'model.keras')!r}); "
        f"x = np.asarray(Image.open({str(image)!r}).convert('RGB').resize((32, 32)), 'float32')[None]; "
        "print(model.name, model(x).shape, [type(l).__name__ for l in model.layers][1])"
    )
    assert python(code) == "cnn5 (1, 3) DeviceAugment"
    without = subprocess.run([sys.executable, "-c", code.replace("import inat_keras, ", "import ")], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert without.returncode != 0 and "DeviceAugment" in without.stderr  # the import is what makes it work


def test_predict_and_evaluate_from_python(trained, tmp_path):
    run_dir, metrics, data = trained
    model = inat_keras.load_model(run_dir / "model.keras")
    assert model.output_shape == (None, 3)
    rows = inat_keras.predict(run_dir / "model.keras", data / "val", top=2)
    assert len(rows) == 6 and all(row.error is None and len(row.ranked) == 2 for row in rows)
    assert all(row.ranked[0][1] >= row.ranked[1][1] for row in rows)  # best first
    out, again = inat_keras.evaluate(run_dir / "model.keras", output_dir=str(tmp_path / "eval"))
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"]) and (out / "predictions.csv").is_file()
