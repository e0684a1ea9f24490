"""A run's saved split (split.json) back as Splits: from files, or from the TFDS records it named."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import DataError
from .splits import Split, Splits, added_since, first_few
from .tfds_source import TfdsSource

log = logging.getLogger(__name__)


def splits_from_record(record: dict) -> Splits:
    """Rebuild the exact split a run saved (split.json), its skipped files included. The folder is compared with it:
    a file of the split that is gone is an error, a file added since is named in a warning and left unused."""
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
            raise DataError(f"{root} changed since the run's split (split.json) was made: {len(missing)} file(s) of "
                            f"the split are gone: {first_few(missing)}; restore them, or start a new run")  # fmt: skip
        labels = [names.index(Path(p).parts[1]) for p in rel_paths]  # <split>/<class>/[folders/]file
        return Split(paths, labels, {str(root / p): turned[p] for p in rel_paths if p in turned}, source)

    skipped = [(str(root / s["path"]), s["reason"]) for s in record.get("skipped", [])]
    splits = Splits(root, names, part(record["train"]), part(record["val"]), part(record["test"]), skipped)
    added = [] if source else added_since(root, record)
    if added:
        log.warning("%s changed since the run's split (split.json) was made: %d file(s) added since are not in it and "
                    "are not used: %s; a new run reads the folder as it is now", root, len(added), first_few(added))  # fmt: skip
    return splits
