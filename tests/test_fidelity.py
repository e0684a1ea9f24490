"""The study's experiment as it ran (Part A and Part B), colour that survives augmentation, and a
protocol without leaks: sweep trials never see the test set, early stopping spans stages and resumes,
a resumed run draws new augmentations, evaluate re-reads the run's own test list, and the checkpoint
always matches the history after a kill."""

import dataclasses
import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from inat_keras.cli import main
from inat_keras.config import FinetuneConfig, ScratchConfig, build_config, load_config, shipped_config
from inat_keras.data.augment import STUDY, Augment, AugmentSpec, device_augment
from inat_keras.data.pipeline import make_dataset
from inat_keras.data.splits import Split, load_splits
from inat_keras.models.finetune import FinetuneArchitecture, build_finetune_model
from inat_keras.models import strategies
from inat_keras.models.strategies import plan_stages, unit_groups
from inat_keras.sweeps.launch import run_sweep
from inat_keras.training import callbacks
from inat_keras.training.kinds import KINDS
from inat_keras.training.loop import compile_model
from inat_keras.training.optimizers import CarriedAdam
from inat_keras.outputs.run_folder import read_checkpoint_record, read_history

SIZE = 32


def finetune_config(**values) -> FinetuneConfig:
    return build_config(FinetuneConfig, {"image_size": SIZE, "weights": "none", "wandb": "disabled", **values})


# ---- Part B: units, counts, batch norm, Adam -------------------------------------------------------------


@pytest.fixture(scope="module")
def independent_unit_params() -> dict[str, int]:
    """Trainable parameters per torchvision `features` child, from keras.applications' own EfficientNetV2-S
    (same architecture, its own layer names), not from our grouping code."""
    reference = keras.applications.EfficientNetV2S(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                                    include_preprocessing=False)  # fmt: skip
    counts: dict[str, int] = {}
    for layer in reference.layers:
        name = layer.name
        unit = "stem" if name.startswith("stem_") else "top" if name.startswith("top_") else None
        if name.startswith("block"):
            unit = f"stage{name[5]}"
        if unit:
            counts[unit] = counts.get(unit, 0) + sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    channels = reference.output_shape[-1]
    counts["head"] = channels * 10 + 10
    return counts


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_finetune_model(FinetuneArchitecture.of(finetune_config()), 10)


@pytest.mark.backend_independent  # parameter counts, no arithmetic of the backend's
def test_stage_units_have_torchvisions_parameter_counts(model, independent_unit_params):
    ours = {
        name: sum(int(np.prod(w.shape)) for layer in members for w in layer.trainable_weights)
        for name, members in unit_groups(model, "stage").items()
    }
    assert set(ours) == {"stem", *(f"stage{s}" for s in range(1, 7)), "top", "head"}
    assert ours == independent_unit_params


def schedule_counts(capsys, *flags) -> list[tuple[str, int]]:
    assert main(["finetune", *flags, "--print-schedule"]) == 0
    rows = re.findall(r"^\d+\s+(\d+(?:-\d+)?)\s+([\d,]+)\s", capsys.readouterr().out, flags=re.M)
    return [(epochs, int(count.replace(",", ""))) for epochs, count in rows]


@pytest.mark.backend_independent  # parameter counts, no arithmetic of the backend's
def test_print_schedule_shows_the_studys_stages(capsys, independent_unit_params, model, monkeypatch):
    def built_once(architecture, num_classes):  # a V2-S build takes about 10 s; the four tables need one
        assert (architecture.backbone, architecture.weights, num_classes) == ("efficientnetv2_s", "none", 10)
        return model

    monkeypatch.setattr(strategies, "build_finetune_model", built_once)
    p = independent_unit_params
    order = ["head", "top", "stage6", "stage5", "stage4", "stage3"]
    cumulative = list(np.cumsum([p[u] for u in order]))
    assert schedule_counts(capsys) == [("1-2", cumulative[0]), ("3-4", cumulative[1]), ("5-6", cumulative[2]),
                                       ("7-8", cumulative[3]), ("9-10", cumulative[4])]  # fmt: skip
    final = schedule_counts(capsys, "--config", str(shipped_config("finetune_final.yaml")))
    assert final == [("1-2", cumulative[1]), ("3-4", cumulative[2]), ("5-6", cumulative[3]), ("7-8", cumulative[4]),
                     ("9-10", cumulative[5])]  # fmt: skip
    assert schedule_counts(capsys, "--strategy", "last_k", "--k", "5") == [("1-10", cumulative[5])]
    assert schedule_counts(capsys, "--strategy", "full") == [("1-10", sum(p.values()))]
    out = capsys.readouterr().out
    assert "Downloading" not in out


def test_the_study_configs_set_the_studys_regime():
    for name in ("finetune.yaml", "finetune_final.yaml"):
        study = load_config(FinetuneConfig, shipped_config(name))
        assert (study.unfreeze_unit, study.batch_norm_mode, study.optimizer_state) == ("stage", "study", "carry")
        assert (study.augmentation, study.learning_rate, study.batch_size, study.image_size) == ("study", 1e-4, 16, 384)
    final = load_config(FinetuneConfig, shipped_config("finetune_final.yaml"))
    assert final.unfreeze_start == 1 and final.val_fraction == 0
    guide = load_config(FinetuneConfig, shipped_config("finetune_keras_guide.yaml"))
    assert (guide.unfreeze_unit, guide.batch_norm_mode, guide.optimizer_state) == ("block", "frozen", "fresh")
    for name in ("scratch.yaml", "scratch_best.yaml"):
        study = load_config(ScratchConfig, shipped_config(name))
        assert (study.augmentation, study.conv_dropout, study.input_norm) == ("study", "channel", "imagenet")


def block_weights(network, block: str) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in network.weights if w.path.startswith(f"{block}_")}


@pytest.mark.parametrize("mode", ["study", "frozen"])
@pytest.mark.large
def test_batch_norm_modes_in_frozen_units(mode):
    """On Lite0, whose batch norms behave as V2-S's (keras.layers.BatchNormalization) and which compiles faster."""
    settings = finetune_config(backbone="efficientnet_lite0", strategy="head", batch_norm_mode=mode,
                               weights="imagenet")  # "pretrained" to the strategies; none loaded  # fmt: skip
    network = build_finetune_model(FinetuneArchitecture.of(dataclasses.replace(settings, weights="none")), 3)
    [stage] = plan_stages(network, settings)
    stage.apply(network)
    images = np.random.default_rng(0).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    labels = np.arange(8) % 3
    compile_model(network, settings, batch_spec=(images[:4], labels[:4]))  # TensorFlow traces the step once
    before = block_weights(network, "block2a")
    network.fit(images, labels, batch_size=4, verbose=0)
    after = block_weights(network, "block2a")
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    statistics = {p for p in before if p.endswith(("moving_mean", "moving_variance"))}
    assert statistics, "block2a holds batch norm"
    if mode == "study":
        assert moved == statistics  # running statistics update; scale, offset and kernels stay bit-identical
    else:
        assert moved == set()
    names = {w.path for w in network.trainable_weights}
    assert not any(p.startswith("block2a_") for p in names) and any(p.startswith("logits") for p in names)


def torch_adam(params: dict, grads: list[dict], lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) -> dict:
    """torch.optim.Adam's update, per parameter: its own step count from its first gradient."""
    state = {name: {"m": 0.0, "v": 0.0, "t": 0} for name in params}
    params = {k: v.astype(np.float64) for k, v in params.items()}
    for step in grads:
        for name, g in step.items():
            s = state[name]
            s["t"] += 1
            s["m"] = b1 * s["m"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            denom = np.sqrt(s["v"]) / math.sqrt(1 - b2 ** s["t"]) + eps
            params[name] = params[name] - lr / (1 - b1 ** s["t"]) * s["m"] / denom
    return params


def test_carried_adam_equals_torchs_adam_across_unfreezing():
    rng = np.random.default_rng(1)
    start = {"head": rng.normal(size=(3,)).astype("float32"), "unit": rng.normal(size=(2, 2)).astype("float32")}
    head, unit = keras.Variable(start["head"], name="head"), keras.Variable(start["unit"], name="unit")
    optimizer = CarriedAdam([head, unit], learning_rate=1e-3)
    steps = [{"head": rng.normal(size=(3,))} for _ in range(3)]  # the head alone
    steps += [{"head": rng.normal(size=(3,)), "unit": rng.normal(size=(2, 2))} for _ in range(4)]  # unit unfrozen
    optimizer.activate([head])
    for step in steps:
        if "unit" in step and len(optimizer._trainable_variables) == 1:
            optimizer.activate([head, unit])
        variables = [head, unit][: len(step)]
        optimizer.apply([keras.ops.convert_to_tensor(step[k].astype("float32")) for k in ("head", "unit")[: len(step)]], variables)
    expected = torch_adam(start, steps)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head), expected["head"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(unit), expected["unit"], rtol=1e-5, atol=1e-6)
    fresh = {"head": expected["head"], "unit": torch_adam({"unit": start["unit"]}, [{"unit": s["unit"]} for s in steps[3:]])["unit"]}
    assert np.allclose(fresh["unit"], expected["unit"])  # a new unit's first steps are bias-corrected from 1
    assert [float(keras.ops.convert_to_numpy(s)) for s in optimizer.steps] == [7.0, 4.0]


# ---- Part A ---------------------------------------------------------------------------------------------


def test_the_cnn_normalises_like_the_study_and_drops_whole_channels(tiny_cnn_options):
    from inat_keras.models.cnn import CnnArchitecture, build_cnn

    network = build_cnn(CnnArchitecture.of(build_config(ScratchConfig, {**tiny_cnn_options, "dropout": 0.5})), 3)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    normalised = keras.ops.convert_to_numpy(network.get_layer("normalise")(np.full((1, 2, 2, 3), mean, "float32")))
    np.testing.assert_allclose(normalised, 0, atol=1e-5)
    one_std = keras.ops.convert_to_numpy(network.get_layer("normalise")(
        np.full((1, 2, 2, 3), mean + np.array([0.229, 0.224, 0.225]) * 255, "float32")))  # fmt: skip
    np.testing.assert_allclose(one_std, 1, atol=1e-5)
    dropout = network.get_layer("block1_dropout")
    out = keras.ops.convert_to_numpy(dropout(np.ones((4, 6, 6, 8), "float32"), training=True))
    per_map = out.reshape(4, 36, 8)
    assert np.all((per_map == per_map[:, :1]).all(axis=1))  # each feature map kept or dropped whole
    assert isinstance(network.get_layer("dense_dropout"), keras.layers.Dropout)


# ---- Augmentation: colour, the study preset, resumes ------------------------------------------------------


def coloured(colour, n=64, size=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(colour, np.float32) + rng.normal(0, 10, (n, size, size, 3)), 0, 255).astype("float32")


def saturation(images: np.ndarray) -> float:
    return float(((images.max(-1) - images.min(-1)) / (images.max(-1) + 1e-6)).mean())


def augmented(spec: AugmentSpec, images: np.ndarray, seed=(3, 0)) -> np.ndarray:
    layer = Augment(spec)
    ds = tf.data.Dataset.from_tensors((images, tf.constant(seed, tf.int64))).map(lambda x, s: layer(x, seed=s))
    return next(iter(ds)).numpy()


@pytest.mark.parametrize("place", ["host", "device"])
@pytest.mark.parametrize("preset", ["inat-keras", "study"])
def test_colour_survives_augmentation(tmp_path, tiny_cnn_options, preset, place):
    """Measured on the earlier code: red [180, 30, 29] became [175, 171, 171] (saturation factor drawn from [0, 0.1])."""
    red = coloured((180, 30, 30))
    folder = tmp_path / "red" / "train" / "red"
    folder.mkdir(parents=True)
    for i, image in enumerate(red[:16]):
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    config = build_config(ScratchConfig, {**tiny_cnn_options, "augmentation": preset, "augment_on": place})
    split = Split(sorted(str(p) for p in folder.iterdir()), [0] * 16)
    on_device = device_augment(config) or (lambda x, training: x)
    batches = np.concatenate([keras.ops.convert_to_numpy(on_device(x.numpy(), training=True))
                              for x, _ in make_dataset(split, config, training=True, epochs=(0, 4))])  # fmt: skip
    original = red[:16]
    assert not np.allclose(batches, np.concatenate([original] * 4))  # augmented in one place or the other
    assert np.abs(batches.mean(axis=(0, 1, 2)) - original.mean(axis=(0, 1, 2))).max() < 15
    assert abs(saturation(batches) - saturation(original)) < 0.08


def test_a_colour_only_task_learns_with_augmentation_on(tmp_path, tiny_cnn_options):
    """Red against green: grey training images would leave training accuracy at chance.

    Fixed seeds per class (never `hash()`, which Python salts per process). Eight filters and 48 images per
    class: with four filters and 24 images the JAX run depended on which ReLUs survived initialisation."""
    root = tmp_path / "colours"
    for split, n in (("train", 48), ("val", 6)):
        for seed, (name, colour) in enumerate((("green", (30, 160, 40)), ("red", (180, 30, 30)))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(coloured(colour, n=n, seed=seed)):
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i}.png")
    config = build_config(ScratchConfig, {**tiny_cnn_options, "filters": [8] * 5, "data_dir": str(root),
                                          "output_dir": str(tmp_path / "run"), "epochs": 4, "color_jitter": 0.1,
                                          "learning_rate": 0.01, "val_fraction": 0.25})  # fmt: skip
    run_dir, metrics = KINDS["scratch"].train(config)
    assert float(read_history(run_dir / "history.csv")[-1]["accuracy"]) == 1.0  # chance is 0.5
    assert metrics["test_accuracy"] == 1.0


def test_the_study_preset_draws_what_the_study_did():
    images = np.zeros((400, 16, 16, 3), np.float32)
    images[:, :, :8] = 255  # left half white
    flips = augmented(AugmentSpec(horizontal_flip=STUDY.horizontal_flip), images)
    flipped = (flips[:, :, :8].mean(axis=(1, 2, 3)) < 128).mean()
    assert 0.02 < flipped < 0.09  # p = 0.05
    vflips = augmented(AugmentSpec(vertical_flip=STUDY.vertical_flip), images.transpose(0, 2, 1, 3))
    assert 0.02 < (vflips[:, :8].mean(axis=(1, 2, 3)) < 128).mean() < 0.09
    dot = np.zeros((200, 33, 33, 3), np.float32)
    dot[:, 16, 28] = 255  # right of the centre
    turned = augmented(AugmentSpec(rotation=STUDY.rotation), dot).max(-1)
    ys, xs = np.unravel_index(turned.reshape(200, -1).argmax(axis=1), (33, 33))
    angles = np.degrees(np.arctan2(ys - 16, xs - 16))
    assert np.abs(angles).max() <= 20 + 6 and np.abs(angles).max() > 10  # within the study's +-20 degrees, spread
    noise = np.random.default_rng(0).uniform(0, 255, (300, 16, 16, 3)).astype("float32")
    blurred = augmented(AugmentSpec(blur_probability=STUDY.blur_probability), noise)
    changed = ~np.all(blurred == noise, axis=(1, 2, 3))
    assert 0.02 < changed.mean() < 0.1 and blurred[changed].std() < noise[changed].std()
    colour = augmented(dataclasses.replace(STUDY, horizontal_flip=0, vertical_flip=0, rotation=0, blur_probability=0),
                       coloured((180, 30, 30), n=400))  # fmt: skip
    jittered = ~np.all(np.isclose(colour, coloured((180, 30, 30), n=400)), axis=(1, 2, 3))
    assert 0.02 < jittered.mean() < 0.09  # ColorJitter applied with p = 0.05


def test_the_host_and_the_backend_draw_the_same_transforms():
    """The same layer inside tf.data and called directly under the active backend: same seed, same kind of draws."""
    spec = AugmentSpec(horizontal_flip=0.5, rotation=0.05, jitter=0.1)
    images = coloured((180, 30, 30), n=32)
    host = augmented(spec, images)
    device = keras.ops.convert_to_numpy(Augment(spec)(images, seed=keras.ops.convert_to_tensor([3, 0], "int64")))
    for batch in (host, device):
        assert np.abs(batch.mean(axis=(0, 1, 2)) - images.mean(axis=(0, 1, 2))).max() < 15
    if keras.backend.backend() == "tensorflow":
        np.testing.assert_allclose(host, device, atol=1e-3)


def test_a_resumed_run_continues_the_augmentation_draws(image_folder):
    config = build_config(ScratchConfig, {"image_size": 24, "batch_size": 4, "rotation": 0.1, "color_jitter": 0.1,
                                          "augment_on": "host"})
    splits = load_splits(image_folder, 0.3, 0)
    whole = np.concatenate([x.numpy() for x, _ in make_dataset(splits.train, config, training=True, epochs=(0, 2))])
    resumed = np.concatenate([x.numpy() for x, _ in make_dataset(splits.train, config, training=True, epochs=(1, 2))])
    n = len(splits.train)
    np.testing.assert_array_equal(resumed, whole[n:])  # epoch 2 as if never interrupted
    assert not np.allclose(np.sort(resumed.mean(axis=(1, 2, 3))), np.sort(whole[:n].mean(axis=(1, 2, 3))))


# ---- Protocol ---------------------------------------------------------------------------------------------


@pytest.mark.backend_independent  # the protocol: which files a trial reads
def test_sweep_trials_never_touch_the_test_set(image_folder, tmp_path, monkeypatch, make_sweep_file, tiny_cnn_options):
    from inat_keras.outputs import tracking

    logged, log_results = [], tracking.log_results
    monkeypatch.setattr(tracking, "log_results", lambda run, m, p: logged.append((m, p)) or log_results(run, m, p))
    touched = []
    real = make_dataset

    def watching(split, config, training, **kwargs):
        touched.append(set(split.paths))
        return real(split, config, training, **kwargs)

    monkeypatch.setattr("inat_keras.training.loop.make_dataset", watching)
    constants = {k: v for k, v in tiny_cnn_options.items() if k not in ("wandb", "learning_rate")} | {"pictures": True}
    sweep = make_sweep_file(tmp_path, {"learning_rate": {"values": [0.01, 0.003]}}, constants, method="random")
    _, out = run_sweep(sweep, 2, {"data_dir": str(image_folder)}, tmp_path / "out")
    test_paths = set(load_splits(image_folder, 0.2, 42).test.paths)
    assert touched and not any(paths & test_paths for paths in touched)
    for trial in sorted((out / "trials").iterdir()):
        metrics = json.loads((trial / "metrics.json").read_text())
        assert not [k for k in metrics if k.startswith("test") or "per_class" in k], trial
        assert [p.name for p in trial.glob("*.png")] == ["curves.png"], trial  # train/val history only: no test picture
    assert len(logged) == 2
    for metrics, pictures in logged:
        assert not pictures and not [k for k in metrics if "test" in k]


def one_epoch_stages(model, config):
    from inat_keras.models.strategies import Stage

    return [Stage(e, e + 1) for e in range(config.epochs)]


@pytest.mark.backend_independent  # the callback's bookkeeping across stages and a resume
def test_early_stopping_spans_stages_and_a_resume(image_folder, tmp_path, tiny_cnn_options, interrupt):
    staged = dataclasses.replace(KINDS["scratch"], plan_stages=one_epoch_stages)
    still = {**tiny_cnn_options, "data_dir": str(image_folder), "epochs": 6, "early_stopping": 2,
             "learning_rate": 1e-12, "augment": False}  # fmt: skip  (val_accuracy cannot change: patience decides)
    _, metrics = staged.train(build_config(ScratchConfig, {**still, "output_dir": str(tmp_path / "a")}))
    assert metrics["epochs_run"] == 3  # best at epoch 1, then 2 epochs without gain
    interrupted = dataclasses.replace(staged, callbacks=lambda model: [interrupt(at_epoch=2)])
    config = build_config(ScratchConfig, {**still, "output_dir": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(config)
    _, metrics = staged.train(config)
    assert metrics["epochs_run"] == 3


@pytest.mark.backend_independent  # the run's test list, a broken file
def test_evaluate_reuses_the_runs_test_list_and_reports_a_broken_file(image_folder, tmp_path, capsys, tiny_cnn_options):
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder), "epochs": 1,
                                          "output_dir": str(tmp_path / "run")})  # fmt: skip
    run_dir, trained = KINDS["scratch"].train(config)
    extra = image_folder / "val" / "cat" / "added_later.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(extra)
    assert main(["evaluate", "--checkpoint", str(run_dir / "model.keras"), "--output-dir", str(tmp_path / "e")]) == 0
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert again["test_images"] == trained["test_images"] and again["test_accuracy"] == trained["test_accuracy"]
    saved_test = json.loads((run_dir / "split.json").read_text())["test"]
    (image_folder / saved_test[0]).write_bytes(b"no longer an image")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run_dir / "model.keras"), "--output-dir", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 image(s) of the run's test list") and saved_test[0] in err[0]


@pytest.mark.backend_independent  # files on disk after a kill
def test_a_kill_between_backup_and_checkpoint_leaves_them_in_agreement(image_folder, tmp_path, monkeypatch, tiny_cnn_options):
    config = build_config(ScratchConfig, {**tiny_cnn_options, "data_dir": str(image_folder), "epochs": 3,
                                          "output_dir": str(tmp_path / "run"), "augment": False})  # fmt: skip
    real_end, killed = callbacks.RunCheckpoint.on_epoch_end, []

    def killed_before_the_checkpoint(self, epoch, logs=None):
        if epoch == 0 and not killed:  # the backup of epoch 1 is written, its checkpoint is not
            killed.append(epoch)
            raise KeyboardInterrupt
        real_end(self, epoch, logs)

    monkeypatch.setattr(callbacks.RunCheckpoint, "on_epoch_end", killed_before_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        KINDS["scratch"].train(config)
    assert not (tmp_path / "run" / "model.keras").exists() and len(read_history(tmp_path / "run" / "history.csv")) == 1
    run_dir, metrics = KINDS["scratch"].train(config)
    rows = read_history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    best = max(float(r["val_accuracy"]) for r in rows)
    first_best = next(int(r["epoch"]) for r in rows if float(r["val_accuracy"]) == best)
    assert read_checkpoint_record(run_dir)["epoch"] == first_best and metrics["best_val_accuracy"] == best
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    splits = load_splits(image_folder, config.val_fraction, config.seed)
    logits = np.concatenate([keras.ops.convert_to_numpy(model(x, training=False))
                             for x, _ in make_dataset(splits.val, config, training=False)])  # fmt: skip
    assert (logits.argmax(1) == np.array(splits.val.labels)).mean() == pytest.approx(best)
