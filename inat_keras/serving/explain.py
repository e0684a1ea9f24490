"""`run.py explain`: a checkpoint's Grad-CAM, guided backpropagation, first-layer filters and block feature
maps for some image files, as PNGs with an `explain.json` index."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np

from ..analysis import explain as algorithms
from ..analysis.explain_plots import plot_feature_maps, plot_filters, plot_gradcam, plot_guided
from ..analysis.figures import caption
from ..config import ExplainOptions
from ..errors import ConfigError, DataError
from ..files import write_json
from ..inference.checkpoint import class_names_for, image_shape, load_checkpoint
from ..outputs.run_folder import empty_output_dir
from .predict import decoded

INDEX = "explain.json"
FEATURE_MAP_CHANNELS = 16
_CNN_BLOCK = re.compile(r"block\d+_act")  # the CNN's block activations (models/cnn.py names them)


def cnn_blocks(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if _CNN_BLOCK.fullmatch(layer.name)]


def class_index(name: str | None, class_names: list[str]) -> int | None:
    if name is None:
        return None
    if name not in class_names:
        raise ConfigError(f"--class {name!r} is not a class of this model; accepted: {', '.join(class_names)}")
    return class_names.index(name)


def check_gradcam_layer(model: keras.Model, name: str | None) -> str:
    accepted = algorithms.feature_map_layers(model)
    if name is None:
        return algorithms.gradcam_layer(model)
    if name not in accepted:
        raise ConfigError(f"--gradcam-layer {name!r} is not a feature-map layer of {model.name}; accepted: {', '.join(accepted)}")
    return name


def guided_layer(model: keras.Model, name: str | None) -> str | None:
    """The layer whose neurons guided backpropagation explains: by default the CNN's last block; None
    (skipped) for a model without the CNN's blocks unless one is asked for, which is refused."""
    blocks = cnn_blocks(model)
    if not blocks:
        if name is not None:
            raise ConfigError(f"--layer needs the CNN: guided backpropagation swaps the model's activation layers, and "
                              f"{model.name} keeps its activations inside its backbone's blocks")  # fmt: skip
        return None
    accepted = [layer.name for layer in model.layers[model.layers.index(model.get_layer(blocks[0])):]]
    if name is None:
        return blocks[-1]
    if name not in accepted:
        raise ConfigError(f"--layer {name!r} is not a layer of {model.name} after its first activation; accepted: {', '.join(accepted)}")
    return name


def decode_images(images: list[str], size: int, channels: int) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    """The files that decode and their pixels as the model sees them (one decode each, predict's), and (path,
    reason) for each file that does not."""
    rows = list(decoded(images, size, channels, {p: "no such file" for p in images if not Path(p).is_file()}))
    good = [(path, pixels) for path, pixels, _ in rows if pixels is not None]
    pixels = np.stack([x for _, x in good]) if good else np.zeros((0, size, size, channels), np.uint8)
    return [path for path, _ in good], pixels, [(path, reason) for path, x, reason in rows if x is None]


def true_class(path: str, class_names: list[str]) -> str | None:
    """The class a file is filed under (data/val/<class>/x.jpg, as the image folders keep them), or None."""
    folder = Path(path).parent.name
    return folder if folder in class_names else None


def verdict(predicted: str, probability: float, true: str | None) -> tuple[str, bool]:
    """(the Grad-CAM title's first words, whether the prediction is wrong): WRONG first, so it cannot be missed."""
    said = f"predicted {predicted} ({probability:.0%})"
    if true is None:
        return f"{said}; true class unknown (the file is not in a folder named after a class)", False
    if true != predicted:
        return f"WRONG: {said}, true class {true}", True
    return f"right: {said}, true class {true}", False


def strongest(maps: np.ndarray, count: int) -> list[int]:
    return [int(c) for c in np.argsort(-maps.max(axis=(0, 1)), kind="stable")[:count]]


def explain_checkpoint(options: ExplainOptions):
    """Writes the pictures and the index; returns (output folder, index). Unreadable images are skipped
    and listed; everything a user chose is checked before any picture is made."""
    checkpoint, images, channels, neurons = Path(options.checkpoint), options.images, options.channels, options.neurons
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, options.data_dir, options.demo)
    wanted = class_index(options.class_name, class_names)
    cam_layer = check_gradcam_layer(model, options.gradcam_layer)
    neuron_layer = guided_layer(model, options.layer)
    width = model.get_layer(neuron_layer).output.shape[-1] if neuron_layer else 0
    if channels is not None and not all(0 <= c < width for c in channels):
        raise ConfigError(f"--channels of {neuron_layer} must lie in 0..{width - 1}; got {channels}")
    size, depth = image_shape(model)
    good, pixels, skipped = decode_images(images, size, depth)
    if not good:
        raise DataError(f"none of the {len(images)} image(s) could be read: " + "; ".join(f"{p}: {r}" for p, r in skipped))
    out_dir = empty_output_dir(options.output_dir, "explain")
    x = pixels.astype(np.float32)
    index = {
        "checkpoint": str(checkpoint), "backend": keras.backend.backend(), "gradcam_layer": cam_layer,
        "images": [], "skipped": [{"path": p, "reason": r} for p, r in skipped], "not_computed": {},
    }  # fmt: skip

    cam = algorithms.grad_cam(model, x, cam_layer, wanted)
    rows, cols = cam.heat.shape[1:]
    index["gradcam_resolution"] = [int(rows), int(cols)]
    names = [f"{i:02d}_{Path(p).stem}" for i, p in enumerate(good)]
    captions = [caption(f"run {checkpoint.parent.name}", f"image {Path(p).parent.name}/{Path(p).name}") for p in good]
    for i, path in enumerate(good):
        predicted = int(cam.probabilities[i].argmax())
        explained, true = class_names[int(cam.classes[i])], true_class(path, class_names)
        entry = {"path": path, "predicted": class_names[predicted], "probability": float(cam.probabilities[i, predicted]),
                 "true_class": true, "correct": None if true is None else true == class_names[predicted],
                 "gradcam_class": explained, "gradcam": f"{names[i]}_gradcam.png"}  # fmt: skip
        said, wrong = verdict(class_names[predicted], cam.probabilities[i, predicted], true)
        title = f"{said}\nGrad-CAM of {explained} at {cam_layer} ({rows}x{cols})"
        plot_gradcam(pixels[i], cam.heat[i], title, out_dir / entry["gradcam"], captions[i], wrong)
        index["images"].append(entry)

    if neuron_layer is None:
        index["not_computed"]["guided_backprop"] = f"{model.name} is not the CNN (its activations are inside its backbone)"
    else:
        chosen = channels if channels is not None else algorithms.strongest_channels(model, x, neuron_layer, min(neurons, width))
        maps = algorithms.guided_backprop(model, x, neuron_layer, chosen)
        index.update({"guided_layer": neuron_layer, "neuron_score": algorithms.NEURON_SCORE, "channels": chosen})
        for i, entry in enumerate(index["images"]):
            entry["guided"] = f"{names[i]}_guided.png"
            title = f"Guided backpropagation: the input pixels that raise the largest value of {len(chosen)} channels of {neuron_layer}"
            plot_guided(pixels[i], maps[i], chosen, title, out_dir / entry["guided"], captions[i])

    first = algorithms.first_conv_kernel(model)
    if first is not None:
        name, kernel = first
        index["filters"] = "filters.png"
        plot_filters(kernel, f"{name}: {kernel.shape[-1]} filters of {kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]}",
                     out_dir / index["filters"], caption(f"run {checkpoint.parent.name}", "none (the layer's weights)"))  # fmt: skip

    blocks = cnn_blocks(model)
    if blocks:
        index["feature_maps"] = {"image": good[0]}
        for block, maps in zip(blocks, algorithms.feature_maps(model, x[0], blocks)):
            shown = strongest(maps, FEATURE_MAP_CHANNELS)
            index["feature_maps"][block] = f"feature_maps_{block}.png"
            title = f"{block} ({maps.shape[0]}x{maps.shape[1]}): {len(shown)} most active of {maps.shape[-1]} channels"
            plot_feature_maps(maps, shown, title, out_dir / index["feature_maps"][block], captions[0])
    else:
        index["not_computed"]["feature_maps"] = f"{model.name} has no CNN blocks"
    write_json(out_dir / INDEX, index)
    return out_dir, index
