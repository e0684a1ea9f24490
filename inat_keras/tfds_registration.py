"""`tfds.load("inaturalist12k")` after a bare `import inat_keras`, without importing TensorFlow Datasets (or
TensorFlow) now: a finder on sys.meta_path waits for tensorflow_datasets.core.registered to load, then adds
a provider that answers for that one name, importing inat_keras.data.tfds_dataset only when TFDS asks."""

import sys

TFDS_NAME = "inaturalist12k"
_TFDS_REGISTRY = "tensorflow_datasets.core.registered"


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


class _AfterTfdsRegistry:
    """Import hook: lets the registry module load as usual, then adds the provider; removes itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TFDS_REGISTRY:
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(fullname)  # the normal finders' answer
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _add_provider(module)

            spec.loader.exec_module = exec_module  # this module's own loader instance only
        return spec


if _TFDS_REGISTRY in sys.modules:
    _add_provider(sys.modules[_TFDS_REGISTRY])
elif not any(type(f).__name__ == _AfterTfdsRegistry.__name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTfdsRegistry())
