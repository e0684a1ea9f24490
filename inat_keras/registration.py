"""What `import inat_keras` sets up, without importing TensorFlow, TFDS or Keras now: when one of them loads (at
once, if it is loaded already), it learns the project's parts.

- TFDS: `tfds.load("inaturalist12k")` finds the builder (a provider that imports inat_keras.data.tfds_dataset only
  when TFDS asks for that name).
- Keras: `keras.models.load_model` of a run's model.keras finds the project's classes (they are registered by
  importing their modules once Keras has loaded).
"""

import importlib
import sys

TFDS_NAME = "inaturalist12k"
_TFDS_REGISTRY = "tensorflow_datasets.core.registered"
# What a run's model.keras names: its layers, and the optimizer, schedule, loss and metric of its compile settings.
KERAS_MODULES = ("inat_keras.models.layers", "inat_keras.data.augment", "inat_keras.training.optimizers",
                 "inat_keras.training.schedules", "inat_keras.training.losses")  # fmt: skip


class _TfdsProvider:
    """A TFDS DatasetBuilderProvider for our builder; the builder module (TensorFlow, Keras) loads on demand."""

    def has_dataset(self, name: str) -> bool:
        return name == TFDS_NAME

    def get_builder_cls(self, name: str):
        from .data.tfds_dataset import Inaturalist12k

        return Inaturalist12k


def _add_provider(registered) -> None:
    add = getattr(registered, "add_dataset_builder_provider", None)  # absent: import the builder module itself
    if add is not None:
        add(_TfdsProvider(), index=0)  # first, so the lookup does not import all of TFDS's own builders


def _register_classes(keras_module) -> None:
    for name in KERAS_MODULES:
        importlib.import_module(name)


class _AfterImport:
    """Import hook: lets `module` load as usual, then calls `then(module)`; removes itself."""

    def __init__(self, module: str, then):
        self.module, self.then = module, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(fullname)  # the normal finders' answer
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run, then = spec.loader.exec_module, self.then

            def exec_module(module):
                run(module)
                then(module)

            spec.loader.exec_module = exec_module  # this module's own loader instance only
        return spec


def after_import(module: str, then) -> None:
    """`then(module)` as soon as `module` is imported: now if it is, else by a hook (one per module)."""
    if module in sys.modules:
        then(sys.modules[module])
    elif not any(isinstance(f, _AfterImport) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(module, then))


after_import(_TFDS_REGISTRY, _add_provider)
after_import("keras", _register_classes)
