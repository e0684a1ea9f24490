"""Top-k classes for image files and folders of any size, read as training reads them (the same walk of
nested folders, the same decoder: EXIF orientation, alpha, every supported format), streamed in batches so
that memory stays bounded; a file that cannot be read is reported in its place and never stops the rest."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from ..analysis import errors
from ..data.cache import tagged
from ..data.decode import IMAGE_EXTENSIONS, unreadable_reason
from ..data.splits import Found, Split, Walk, read_headers
from ..errors import DataError
from ..files import replacing
from ..config import PredictOptions
from ..inference.checkpoint import class_names_for, forward, image_shape, load_checkpoint, runs_eagerly

log = logging.getLogger(__name__)

BATCH_SIZE = 32
HEADER_CHUNK = 1024  # files whose headers (EXIF orientation) are read before their pixels stream through


@dataclass(frozen=True)
class Prediction:
    path: str
    ranked: tuple[tuple[str, float], ...] = ()  # (class, probability), most probable first
    error: str | None = None  # why the file could not be read (then nothing is ranked)


@dataclass
class Inputs:
    """What the named files and folders hold, each real file once (one data.splits.Walk for them all)."""

    paths: list[str]  # every file to predict, in the order given (a folder's files sorted)
    known: dict[str, str]  # the reasons already known against some of them (missing, a format no decoder reads)
    left_out: list[tuple[str, str]]  # reached a second time through links, or in a hidden folder: no row of their own
    ignored: int  # hidden files and obvious non-images in the folders, left out as training leaves them out


def image_paths(inputs: list[str]) -> Inputs:
    """Every file named and every image under every folder named, walked as training walks a class folder."""
    walk, paths, known, left_out, ignored = Walk(), [], {}, [], 0
    for item in inputs:
        if Path(item).is_dir():
            found = walk.folder(Path(item), Found())
            paths += sorted(found.images + [path for path, _ in found.unsupported])
            known.update(found.unsupported)
            left_out, ignored = left_out + found.left_out, ignored + found.ignored
        elif first := walk.first(walk.files, item):
            left_out.append((item, f"the same file as {first}, predicted once"))
        else:
            paths.append(item)
            if not Path(item).exists():
                known[item] = "no such file or folder"
    return Inputs(paths, known, left_out, ignored)


def decoded(paths: list[str], size: int, channels: int, known: dict[str, str]) -> Iterator[tuple[str, object, str | None]]:
    """(path, pixels, None) or (path, None, reason) for every path, in order: a chunk's headers are read, then
    its pixels decoded in parallel by the training pipeline's decoder (data.cache.tagged)."""
    for start in range(0, len(paths), HEADER_CHUNK):
        chunk = paths[start : start + HEADER_CHUNK]
        broken, turned = read_headers([p for p in dict.fromkeys(chunk) if p not in known])
        reasons = {**known, **dict(broken)}
        good = [p for p in chunk if p not in reasons]
        images = tagged(Split(good, [0] * len(good), turned), size, channels).as_numpy_iterator() if good else iter(())
        arrived, position = next(images, None), 0
        for path in chunk:
            if path in reasons:
                yield path, None, reasons[path]
                continue
            if arrived is not None and arrived[0] == position:
                yield path, arrived[1], None
                arrived = next(images, None)
            else:
                yield path, None, unreadable_reason(path) or "could not be decoded"
            position += 1


@dataclass
class Predictor:
    """A checkpoint and the files to predict, checked before the first image is decoded."""

    model: keras.Model
    class_names: list[str]
    paths: list[str]
    known: dict[str, str]
    ignored: int
    k: int
    batch_size: int = BATCH_SIZE

    def rows(self, progress: bool = False) -> Iterator[Prediction]:
        """One Prediction per path, in order. Compiled, a short last batch is padded to the batch size so that the
        predict step compiles once."""
        size, channels = image_shape(self.model)
        eager = runs_eagerly(len(self.paths))
        bar = keras.utils.Progbar(len(self.paths), unit_name="image") if progress else None
        pending, images, done = [], [], 0
        for path, pixels, reason in decoded(self.paths, size, channels, self.known):
            pending.append((path, reason))
            if pixels is not None:
                images.append(pixels)
            if len(images) == self.batch_size:
                yield from self._ranked(pending, images, eager)
                done, pending, images = done + len(pending), [], []
                if bar:
                    bar.update(done)
        yield from self._ranked(pending, images, eager)
        if bar:
            bar.update(len(self.paths), finalize=True)

    def _ranked(self, pending: list[tuple[str, str | None]], images: list, eager: bool) -> Iterator[Prediction]:
        if not pending:
            return
        probabilities = np.zeros((0, len(self.class_names)))
        if images:
            x = np.stack(images).astype("float32")
            probabilities = np.exp(errors.log_probabilities(forward(self.model, x, eager, self.batch_size)))
        best = iter(zip(probabilities, errors.top_classes(probabilities, self.k)))
        for path, reason in pending:
            if reason is not None:
                yield Prediction(path, error=reason)
                continue
            row, top = next(best)
            yield Prediction(path, tuple((self.class_names[i], float(row[i])) for i in top))


def predictor(options: PredictOptions) -> Predictor:
    checkpoint, inputs, k = Path(options.checkpoint), options.images, options.top
    model = load_checkpoint(checkpoint)
    class_names = class_names_for(checkpoint, model, options.data_dir, options.demo)
    if not 1 <= k <= len(class_names):
        raise DataError(f"--top must be between 1 and {len(class_names)} (the model's classes), not {k}")
    found = image_paths(inputs)
    if not found.paths:
        raise DataError(f"no image files in {', '.join(inputs)} (readable formats: {', '.join(IMAGE_EXTENSIONS)})")
    for path, reason in found.left_out:
        log.warning("left out %s: %s", path, reason)
    return Predictor(model, class_names, found.paths, found.known, found.ignored, k, options.batch_size)


def predict_images(checkpoint: str, images: list[str], data_dir: str | None = None, demo: bool = False, k: int = 3):
    """(path, top-k) for every readable image, and (path, reason) for every file that is not one."""
    options = PredictOptions(checkpoint=str(checkpoint), images=list(images), data_dir=data_dir, demo=demo, top=k)
    rows = list(predictor(options).rows())
    return [(r.path, list(r.ranked)) for r in rows if r.error is None], [(r.path, r.error) for r in rows if r.error]


def csv_header(k: int) -> list[str]:
    return ["path", *(f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")), "error"]


def write_csv(path: str | Path, rows: Iterator[Prediction], k: int) -> tuple[int, list[tuple[str, str]]]:
    """Stream rows into `path` (one per file, in order; an unreadable file's row holds only its path and
    error), which appears whole when the last row is written: an interrupted run leaves no partial CSV. Returns
    the number of images predicted and the unreadable files with their reasons."""
    predicted, unreadable = 0, []
    with replacing(Path(path), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(k))
        for row in rows:
            if row.error is not None:
                unreadable.append((row.path, row.error))
                writer.writerow([row.path, *[""] * (2 * k), row.error])
                continue
            predicted += 1
            writer.writerow([row.path, *(v for name, p in row.ranked for v in (name, f"{p:.6f}")), ""])
    return predicted, unreadable
