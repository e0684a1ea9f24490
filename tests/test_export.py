"""export: each format loaded with its own runtime (TensorFlow, onnxruntime, the LiteRT interpreter) gives Keras's
logits on colour test images; class names and the input convention come alongside; nothing half-written."""

import json

import keras
import numpy as np
import pytest

from inat_keras.cli import main
from inat_keras.config import FinetuneConfig, ScratchConfig, build_config
from inat_keras.inference.checkpoint import load_checkpoint
from inat_keras.inference.checkpoint import load_images
from inat_keras.training.kinds import KINDS

BACKEND = keras.backend.backend()
RTOL, ATOL = 1e-4, 1e-5  # on logits; the exports measured within 3e-7 of Keras


def saved(model, folder):
    path = folder / "run" / "model.keras"
    path.parent.mkdir(parents=True)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory, make_image_folder, make_tiny_cnn_options, class_names):
    """A tiny CNN with the project's own layers: device augmentation, batch norm, Mish, block max-pooling."""
    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(root / "data", {"train": 1, "val": 2})
    keras.utils.set_random_seed(1)
    config = build_config(ScratchConfig, {**make_tiny_cnn_options(), "batch_norm": True, "activation": "mish", "augment_on": "device"})
    model = KINDS["scratch"].build_model(config, len(class_names))
    assert model.layers[1].__class__.__name__ == "DeviceAugment"
    return saved(model, root), data


def colour_images(data, size=32):
    paths = sorted(str(p) for p in (data / "val").rglob("*.*"))
    return load_images(paths, size, 3).astype("float32")


@pytest.fixture
def exported(class_names):
    """exported(checkpoint, data, fmt, out) -> the exported model's path, its labels and record checked."""

    def export(checkpoint, data, fmt, out):
        assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output-dir", str(out), "--data-dir", str(data)]) == 0
        assert (out / "labels.txt").read_text().splitlines() == list(class_names)
        info = json.loads((out / "export.json").read_text())
        assert info["class_names"] == list(class_names) and info["input"]["shape"][1:] == list(load_checkpoint(checkpoint).input_shape[1:])
        assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
        return out / info["model"]

    return export


def keras_logits(checkpoint, images):
    logits = keras.ops.convert_to_numpy(load_checkpoint(checkpoint)(images, training=False))
    assert np.ptp(logits, axis=0).max() > 1e-3  # the images give different outputs: a match means something
    return logits


def test_saved_model_export_matches_keras(cnn, tmp_path, exported):
    import tensorflow as tf

    checkpoint, data = cnn
    path = exported(checkpoint, data, "saved_model", tmp_path / "sm")
    images = colour_images(data)
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(loaded.serve(images).numpy(), keras_logits(checkpoint, images), rtol=RTOL, atol=ATOL)


def test_onnx_export_matches_keras(cnn, tmp_path, exported):
    import onnxruntime

    checkpoint, data = cnn
    path = exported(checkpoint, data, "onnx", tmp_path / "onnx")
    images = colour_images(data)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(got, keras_logits(checkpoint, images), rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras converts to LiteRT under TensorFlow only")
def test_litert_export_matches_keras(cnn, tmp_path, exported):
    from ai_edge_litert.interpreter import Interpreter

    checkpoint, data = cnn
    path = exported(checkpoint, data, "litert", tmp_path / "litert")
    images = colour_images(data)
    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, keras_logits(checkpoint, images), rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="LiteRT export is refused under other backends only")
def test_litert_under_another_backend_is_one_clear_line(cnn, tmp_path, capsys):
    checkpoint, data = cnn
    out = tmp_path / "litert"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "litert", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "litert export needs the tensorflow backend" in err[0] and "KERAS_BACKEND=tensorflow" in err[0]
    assert not out.exists()


def test_export_refuses_a_used_folder_and_leaves_nothing_when_it_fails(cnn, tmp_path, monkeypatch, capsys):
    checkpoint, data = cnn
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "saved_model", "--output-dir", str(used)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (used / "keep.txt").read_text() == "mine"

    def broken(self, filepath, **kwargs):
        with open(filepath, "w") as f:
            f.write("half")
        raise RuntimeError("converter crashed\nwith a long story")

    monkeypatch.setattr(keras.Model, "export", broken)
    out = tmp_path / "new"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output-dir", str(out), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnx export of" in err[0] and "converter crashed with a long story" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]  # no export, no staging folder


@pytest.mark.skipif(BACKEND != "tensorflow", reason="cost: about 100 s under JAX on 2 CPU cores; JAX's export path is "
                    "checked by the CNN tests here and Lite0's ONNX export in test_efficientnet_lite")  # fmt: skip
@pytest.mark.large
def test_a_fine_tuning_model_exports_as_a_saved_model(tmp_path, make_image_folder, class_names, exported):
    """A backbone between the project's preprocessing and head, loaded with TensorFlow alone: Lite0 at 32x32 with
    its ImageNet weights (random ones give every image nearly the same logits, so a match would mean little). The
    layers around the backbone are the same for V2-S, whose export takes over two minutes on 2 CPU cores."""
    import tensorflow as tf

    data = make_image_folder(tmp_path / "data", {"train": 1, "val": 1})
    keras.utils.set_random_seed(2)
    config = build_config(FinetuneConfig, {"backbone": "efficientnet_lite0", "image_size": 32, "weights": "imagenet"})
    checkpoint = saved(KINDS["finetune"].build_model(config, len(class_names)), tmp_path)
    path = exported(checkpoint, data, "saved_model", tmp_path / "sm")
    images = colour_images(data)
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(loaded.serve(images).numpy(), keras_logits(checkpoint, images), rtol=RTOL, atol=ATOL)
