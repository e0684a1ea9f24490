"""Training from the prepared TFDS records of iNaturalist-12K (data.tfds_dataset) instead of its folders.

A record's `file_name` stands for its file: the split is made, stratified, decoded once into the cache
and saved in split.json exactly as for a folder, with paths <records>/<train|val>/<file_name>. The
builder already turned every image upright and composited its alpha; the files it left out are reported
as a folder run reports its unreadable files, with the same reasons.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ..config import TrainConfig
from ..errors import DataError
from .decode import decode_rgb, squashed
from .splits import TEST_DIR, TRAIN_DIR, Split, Splits, split_and_decode
from .tfds_dataset import Inaturalist12k

TFDS_SPLITS = {TRAIN_DIR: "train", TEST_DIR: "test"}  # our folder names -> the builder's split names


@dataclass(frozen=True)
class TfdsSource:
    data_dir: str  # the TFDS data folder that holds inaturalist12k/<version>/

    @classmethod
    def from_record(cls, record: dict) -> TfdsSource:
        return cls(record["tfds"])

    def describe(self) -> dict:
        return {"tfds": self.data_dir}

    def builder(self) -> tfds.core.DatasetBuilder:
        return prepared_builder(self.data_dir)

    def root(self) -> Path:
        return Path(self.builder().data_dir)

    def identity(self) -> str:
        """Names the records' content for cache keys: their folder and when their info was written."""
        info = self.root() / "dataset_info.json"
        return f"{info.parent}|{os.stat(info).st_mtime_ns}"

    def records(self, folder: str) -> tf.data.Dataset:
        return self.builder().as_dataset(split=TFDS_SPLITS[folder], shuffle_files=False,
                                         decoders={"image": tfds.decode.SkipDecoding()})  # fmt: skip

    def listing(self, folder: str) -> tuple[list[str], list[int]]:
        """(file_name, label) of every record of a split, in record order."""
        names, labels = [], []
        for record in self.records(folder).map(lambda r: (r["file_name"], r["label"])).batch(4096).as_numpy_iterator():
            names += [n.decode() for n in record[0]]
            labels += [int(y) for y in record[1]]
        return names, labels

    def tagged(self, split: Split, image_size: int, channels: int) -> tf.data.Dataset:
        """(index in the split, image, label) for the split's members, read from the records in their order."""
        root = self.root()
        folder = Path(os.path.relpath(split.paths[0], root)).parts[0]
        names = [Path(os.path.relpath(p, root / folder)).as_posix() for p in split.paths]
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.constant(np.arange(len(names)), tf.int64)), -1
        )
        ds = self.records(folder).map(lambda r: (table.lookup(r["file_name"]), r["image"], r["label"]))
        ds = ds.filter(lambda i, image, label: i >= 0)
        return ds.map(lambda i, image, label: (i, squashed(decode_rgb(image, image_size), image_size, channels),
                                               tf.cast(label, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip


@functools.cache
def prepared_builder(data_dir: str) -> tfds.core.DatasetBuilder:
    builder = Inaturalist12k(data_dir=data_dir)
    if not builder.is_prepared():
        raise DataError(
            f"no prepared {builder.name} records in {data_dir}; build them with "
            f"`python run.py tfds --tfds-dir {data_dir}` (or tfds build), or train from a folder with --data-dir"
        )
    return builder


def load_tfds_splits(data_dir: str, val_fraction: float, seed: int, config: TrainConfig | None = None) -> Splits:
    """The records' train split -> stratified train/validation, their test split -> the test set."""
    source = TfdsSource(str(Path(data_dir).expanduser()))
    builder = source.builder()
    root = Path(builder.data_dir)
    parts = {}
    for folder in (TRAIN_DIR, TEST_DIR):
        names, labels = source.listing(folder)
        parts[folder] = Split([str(root / folder / n) for n in names], labels, {}, source)
    left_out = builder.info.metadata.get("skipped", {}) if builder.info.metadata else {}
    skipped = [(str(root / folder / name), reason) for folder, split in TFDS_SPLITS.items()
               for name, reason in left_out.get(split, [])]  # fmt: skip
    class_names = builder.info.features["label"].names
    return split_and_decode(root, class_names, parts[TRAIN_DIR], parts[TEST_DIR], skipped, 0, val_fraction, seed, config)
