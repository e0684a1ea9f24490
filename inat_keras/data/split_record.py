"""A run's saved split (split.json) back as Splits: from files, or from the TFDS records it named."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .splits import Split, Splits
from .tfds_source import TfdsSource


def splits_from_record(record: dict) -> Splits:
    """Rebuild the exact split a run saved (split.json), its skipped files included."""
    root = Path(record["root"])
    names = record["class_names"]

    turned = record.get("orientation", {})
    source = None
    if "source" in record:  # records of a TFDS dataset
        source = TfdsSource.from_record(record["source"])

    def part(rel_paths):
        paths = [str(root / p) for p in rel_paths]
        missing = [] if source else [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DataError(f"{len(missing)} file(s) of the saved split are gone, e.g. {missing[0]}")
        labels = [names.index(Path(p).parts[1]) for p in rel_paths]  # <split>/<class>/[folders/]file
        return Split(paths, labels, {str(root / p): turned[p] for p in rel_paths if p in turned}, source)

    skipped = [(str(root / s["path"]), s["reason"]) for s in record.get("skipped", [])]
    return Splits(root, names, part(record["train"]), part(record["val"]), part(record["test"]), skipped)
