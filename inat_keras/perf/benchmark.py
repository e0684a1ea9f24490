"""`run.py bench`: how fast the active backend trains, infers and feeds one model on this machine.

Steps are timed through Keras's own compiled functions (`train_on_batch`, `predict_on_batch` on one
batch already in the backend's memory), after a compile call and one warm step, so the figures are
the model's step and not the input pipeline; the pipeline and a real `fit` are measured apart, on a
folder of JPEGs. Each figure is the median of several timed repeats. The process's CPU seconds per
step are reported beside the wall clock: on a shared machine they show the work done, whatever the
neighbours take.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..config import FinetuneConfig, ScratchConfig, TrainConfig, commands, load_config, shipped_config
from ..data.augment import augment_spec, device_augment
from ..data.pipeline import make_dataset, steps_per_epoch
from ..data.splits import dataset_root, load_splits
from ..data.synthetic import cached_photo_folder
from ..keras_compat import sublayers
from ..machine import cpu_model
from ..models.cnn import CnnArchitecture, build_cnn, model_flops
from ..models.finetune import FinetuneArchitecture, build_finetune_model
from ..training.callbacks import EpochTimer
from ..training.loop import compile_model, dtype_policy

TRAIN_FLOPS_PER_FORWARD = 3  # forward, input gradient, weight gradient


@dataclass
class BenchOptions(commands.BenchOptions):
    """The command's options (config.commands.BenchOptions) and two knobs that are no flags: the matmul's size and
    extra config values (tests shrink the model with them)."""

    matmul_size: int = 4096
    overrides: dict = field(default_factory=dict)


def model_config(options: BenchOptions) -> TrainConfig:
    values = {"image_size": options.image_size, "batch_size": options.batch_size, "wandb": "disabled",
              "precision": options.precision, "jit_compile": options.jit_compile, **options.overrides}  # fmt: skip
    if options.model == "cnn":
        return load_config(ScratchConfig, None, values)
    if options.model == "cnn-best":
        return load_config(ScratchConfig, shipped_config("scratch_best.yaml"), values)
    if options.model in ("efficientnet", "efficientnet-lite0"):
        backbone = "efficientnet_lite0" if options.model == "efficientnet-lite0" else "efficientnetv2_s"
        return load_config(FinetuneConfig, None, {"weights": "none", "backbone": backbone, **values})
    raise ValueError(f"model must be one of {', '.join(commands.BENCH_MODELS)}, got {options.model!r}")


def build_model(options: BenchOptions, config: TrainConfig, num_classes: int) -> tuple[keras.Model, float]:
    """The model and its forward FLOPs per image."""
    augment = device_augment(config)  # inside the step, as in training (None with augment_on: host)
    if options.model.startswith("efficientnet"):
        model = build_finetune_model(FinetuneArchitecture.of(config), num_classes, augment)
        # keras-cv's fused blocks hold squeeze-excite and batch-norm layers that they never call. While a
        # layer is unbuilt, train_on_batch and predict_on_batch trace the model eagerly on every call
        # (fit does it once): marked built here, they are not measured (nothing is saved from this model).
        for layer in sublayers(model):
            if not layer.built and not layer.weights:
                layer.built = True
        return model, compiled_forward_flops(model, config.image_size)
    model = build_cnn(CnnArchitecture.of(config), num_classes, augment)
    return model, float(model_flops(model))


def compiled_forward_flops(model: keras.Model, image_size: int) -> float:
    """The backend compiler's FLOP count for one image, for models whose layers nest (EfficientNet's blocks)."""
    x = np.zeros((1, image_size, image_size, 3), "float32")
    if keras.backend.backend() == "jax":
        import jax

        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        return float(jax.jit(forward).lower(*weights, x).cost_analysis()["flops"])
    if keras.backend.backend() == "tensorflow":
        graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(x.shape)).graph
        options = {**tf.compat.v1.profiler.ProfileOptionBuilder.float_operation(), "output": "none"}
        return float(tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options).total_float_ops)
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_step(step, options: BenchOptions) -> dict:
    """Compile, warm up, then `repeats` timings of `steps` calls: images/second and CPU seconds per step."""
    start = time.perf_counter()
    step()
    compile_seconds = time.perf_counter() - start
    step()
    walls, cpus = [], []
    for _ in range(options.repeats):
        cpu, start = _cpu_seconds(), time.perf_counter()
        for _ in range(options.steps):
            step()
        walls.append((time.perf_counter() - start) / options.steps)
        cpus.append((_cpu_seconds() - cpu) / options.steps)
    return {
        "images_per_second": options.batch_size / statistics.median(walls),
        "repeats_images_per_second": [round(options.batch_size / w, 2) for w in walls],
        "cpu_seconds_per_step": statistics.median(cpus),
        "compile_seconds": compile_seconds,
    }


def bench_steps(model: keras.Model, options: BenchOptions, num_classes: int, flops: float) -> dict:
    rng = np.random.default_rng(0)
    shape = (options.batch_size, options.image_size, options.image_size, 3)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, shape).astype("float32"))
    y = keras.ops.convert_to_tensor(np.arange(options.batch_size, dtype="int32") % num_classes)
    results = {}
    if "train" in options.part_list():
        train = time_step(lambda: model.train_on_batch(x, y), options)
        train["gflops_per_second"] = train["images_per_second"] * TRAIN_FLOPS_PER_FORWARD * flops / 1e9
        results["train"] = train
    if "infer" in options.part_list():
        infer = time_step(lambda: model.predict_on_batch(x), options)
        infer["gflops_per_second"] = infer["images_per_second"] * flops / 1e9
        results["infer"] = infer
    return results


def bench_matmul(options: BenchOptions) -> dict:
    """The backend's float32 matrix-product rate: the yardstick for a training step's GFLOP/s."""
    rng = np.random.default_rng(0)
    n = options.matmul_size
    a, b = (keras.ops.convert_to_tensor(rng.normal(size=(n, n)).astype("float32")) for _ in "ab")
    product = keras.ops.matmul
    if keras.backend.backend() == "jax":
        import jax

        product = jax.jit(product)

    def step():
        keras.ops.convert_to_numpy(product(a, b)[:1, :1])  # waits for the result

    timed = time_step(step, dataclasses.replace(options, batch_size=1))
    return {"gflops_per_second": 2 * n**3 * timed["images_per_second"] / 1e9, "size": n}


class TrainingTimer(EpochTimer):
    """Also times each epoch's training alone, to the end of its last step (read back, so that JAX's
    asynchronous dispatch has finished it): the figure to set beside the bare step."""

    def __init__(self, images_per_epoch: int):
        super().__init__(images_per_epoch)
        self.train_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.train_seconds.append(0.0)

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # waits for the step
        self.train_seconds[-1] = time.perf_counter() - self._start


def _passes(dataset, options: BenchOptions) -> tuple[float, float]:
    """(wall, CPU) seconds of a full pass over a dataset whose images are already cached: medians of `repeats`."""
    walls, cpus = [], []
    for _ in range(options.repeats):
        cpu, start = _cpu_seconds(), time.perf_counter()
        for _ in dataset:
            pass
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _rates(name: str, images: int, wall: float, cpu: float) -> dict:
    return {f"{name}_images_per_second": images / wall, f"{name}_cpu_ms_per_image": 1000 * cpu / images}


def bench_data(model: keras.Model, config: TrainConfig, options: BenchOptions, root: Path) -> dict:
    """The input pipeline's kinds of pass, in images/s and CPU-ms per image: the first (headers read, every
    image decoded once into the memory cache), cached passes, cached training batches augmented on the host,
    and cached training batches as they feed augmentation on the device. Then a real fit: the first epoch
    compiles, the median of the `repeats` later ones is the steady state (validation included)."""
    config = dataclasses.replace(config, cache="memory")
    cpu, start = _cpu_seconds(), time.perf_counter()
    splits = load_splits(root, config.val_fraction, config.seed, config)
    first = time.perf_counter() - start, _cpu_seconds() - cpu
    decoded = len(splits.train) + len(splits.val) + len(splits.test)
    results = {"train_images": len(splits.train), "val_images": len(splits.val)}
    classes = len(splits.class_names)  # soft training targets (label smoothing, MixUp, CutMix) are one-hot
    if "pipeline" in options.part_list():
        host = dataclasses.replace(config, augment_on="host")
        device = dataclasses.replace(config, augment_on="device")
        results["pipeline"] = {
            **_rates("first_pass", decoded, *first),
            **_rates("cached", len(splits.val), *_passes(make_dataset(splits.val, config, training=False), options)),
            **_rates("augmented", len(splits.train), *_passes(make_dataset(splits.train, host, training=True, classes=classes), options)),
            **_rates("device_feed", len(splits.train), *_passes(make_dataset(splits.train, device, training=True, classes=classes), options)),
            "augmentation": dataclasses.asdict(spec) if (spec := augment_spec(config)) else None,
        }
    if "fit" in options.part_list():
        timer = TrainingTimer(len(splits.train))
        epochs = 1 + options.repeats
        model.fit(
            make_dataset(splits.train, config, training=True, epochs=(0, epochs), classes=classes),
            validation_data=make_dataset(splits.val, config, training=False),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch(len(splits.train), config.batch_size),
            callbacks=[timer],
            shuffle=False,  # the pipeline shuffles
            verbose=0,
        )
        epoch = statistics.median(timer.seconds[1:])
        results["fit"] = {
            "first_epoch_seconds": timer.seconds[0],
            "epoch_seconds": epoch,
            "images_per_second": len(splits.train) / epoch,
            "augment_on": config.augment_on,
        }
        results["fit"]["train_images_per_second"] = len(splits.train) / statistics.median(timer.train_seconds[1:])
    return results


def machine() -> dict:
    """What ran the benchmark: CPU, accelerator, library versions and the settings that change speed."""
    cpu = cpu_model()
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    if keras.backend.backend() == "jax":
        import jax

        info["jax"] = jax.__version__
        info["device"] = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    else:
        gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in tf.config.list_physical_devices("GPU")]
        info["device"] = "gpu: " + ", ".join(gpus) if gpus else "cpu"
    info["tensorflow"] = tf.__version__
    return info


def run_bench(options: BenchOptions) -> dict:
    """All measurements of one model on the active backend, as one JSON-ready dict."""
    options.validate()
    config = model_config(options)
    needs_data = {"pipeline", "fit"} & set(options.part_list())
    root = None
    if needs_data:
        root = dataset_root(options.data_dir) if options.data_dir else cached_photo_folder(options.images)
    num_classes = 10
    keras.utils.set_random_seed(config.seed)
    report = {"model": options.model, "image_size": options.image_size, "batch_size": options.batch_size,
              "precision": options.precision, "jit_compile": options.jit_compile, "steps": options.steps,
              "repeats": options.repeats, "data_dir": str(root) if root else None, **machine()}  # fmt: skip
    with dtype_policy(config.precision):
        model, flops = build_model(options, config, num_classes)
    compile_model(model, config)
    report.update({"params": int(model.count_params()), "forward_gflops_per_image": flops / 1e9})
    report.update(bench_steps(model, options, num_classes, flops))
    if "matmul" in options.part_list():
        report["matmul"] = bench_matmul(options)
        if "train" in report:
            report["train"]["fraction_of_matmul_rate"] = report["train"]["gflops_per_second"] / report["matmul"]["gflops_per_second"]
    if options.peak_tflops and "train" in report:
        report["train"]["mfu"] = report["train"]["gflops_per_second"] / (1000 * options.peak_tflops)
    if needs_data:
        report.update(bench_data(model, config, options, root))
    if "fit" in report and "train" in report:
        report["fit"]["fraction_of_train_step"] = report["fit"]["train_images_per_second"] / report["train"]["images_per_second"]
    return report


def summary(report: dict) -> str:
    """The figures as a few readable lines."""
    lines = [
        f"{report['model']} {report['image_size']}x{report['image_size']} batch {report['batch_size']}, "
        f"{report['backend']} on {report['device']} ({report['cpu']}, {report['cpu_count']} CPUs), "
        f"{report['forward_gflops_per_image']:.3f} GFLOP/image forward"
    ]
    for part in ("train", "infer"):
        if part in report:
            r = report[part]
            share = "".join(f"  {r[k]:.0%} of {name}" for k, name in (("fraction_of_matmul_rate", "matmul rate"),
                                                                       ("mfu", "peak (MFU)")) if k in r)  # fmt: skip
            lines.append(
                f"  {part:<8} {r['images_per_second']:8.1f} images/s  {r['gflops_per_second']:7.1f} GFLOP/s  "
                f"{r['cpu_seconds_per_step']:.3f} CPU s/step  (compile {r['compile_seconds']:.1f} s){share}"
            )
    if "matmul" in report:
        n = report["matmul"]["size"]
        lines.append(f"  matmul   {report['matmul']['gflops_per_second']:8.1f} GFLOP/s (float32, {n}x{n} matrices)")
    if "pipeline" in report:
        r = report["pipeline"]
        for kind, what in (("first_pass", "first pass (headers, decode once)"), ("cached", "cached"),
                           ("augmented", "cached + augmented on the host"), ("device_feed", "cached, feeding device augmentation")):  # fmt: skip
            lines.append(f"  pipeline {r[kind + '_images_per_second']:8.1f} images/s  {r[kind + '_cpu_ms_per_image']:7.2f} CPU-ms/image  {what}")
    if "fit" in report:
        r = report["fit"]
        lines.append(
            f"  fit      {r['epoch_seconds']:8.1f} s/epoch of {report['train_images']} images "
            f"({r['images_per_second']:.1f} images/s; first epoch {r['first_epoch_seconds']:.1f} s; training alone "
            f"{r['train_images_per_second']:.1f} images/s" + (f", {r['fraction_of_train_step']:.2f}x the bare step)" if "fraction_of_train_step" in r else ")")
        )
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
