"""Private parts of Keras, keras-cv, JAX, TFDS and W&B are touched in one module only: inat_keras/keras_compat.py.

Read from the source (AST): an attribute `x._name` that the package does not define itself, a private method
written in a subclass of a library's class (an override of its private hook), an import from `keras.src` or
`jax._src`, or a class swapped by assigning `__class__`, anywhere else is a failure naming the place."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "inat_keras"
COMPAT = PACKAGE / "keras_compat.py"
# Underscored by their library, yet its documented way to extend it: TFDS's builder interface
# (https://www.tensorflow.org/datasets/add_dataset: a builder implements these three).
DOCUMENTED_HOOKS = {"_info", "_split_generators", "_generate_examples"}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED_HOOKS


def own_names(trees: dict) -> set[str]:
    """Every name the package defines: functions, classes, variables, attributes it assigns, arguments."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def library_classes(tree: ast.Module, own_classes: set[str]) -> list[ast.ClassDef]:
    """Classes with a base that is not the package's own."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base).split(".")[-1] for base in node.bases]
            if any(base not in own_classes for base in bases):
                found.append(node)
    return found


def violations(package: Path, compat: Path) -> list[str]:
    trees = {path: ast.parse(path.read_text()) for path in sorted(package.rglob("*.py")) if path != compat}
    own = own_names(trees)
    own_classes = {node.name for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    # a private name written only in an override of a library class is the library's, not ours
    overrides = {
        item.name
        for tree in trees.values()
        for cls in library_classes(tree, own_classes)
        for item in cls.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and private(item.name)
    }
    found = []
    for path, tree in trees.items():
        where = path.relative_to(package.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr) and (node.attr not in own or node.attr in overrides):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.Attribute) and node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                found.append(f"{where}:{node.lineno}: __class__ assignment")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{where}:{node.lineno}: import {m}" for m in modules if ".src" in m or "._src" in m]
        for cls in library_classes(tree, own_classes):
            for item in cls.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and private(item.name):
                    found.append(f"{where}:{item.lineno}: override of {cls.name}.{item.name}")
    return found


def test_private_library_parts_are_used_in_keras_compat_only():
    assert violations(PACKAGE, COMPAT) == []


def test_the_check_finds_each_kind_of_private_access(tmp_path):
    """The check itself, on a package that does each thing once (a check that finds nothing proves nothing)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "compat.py").write_text("def sublayers(layer):\n    return layer._flatten_layers()\n")
    (package / "mine.py").write_text(
        "import keras\n"
        "from keras.src.utils import tracking\n"
        "from jax._src import xla_bridge\n"
        "class Mine:\n"
        "    def _own(self):\n"
        "        self._state = 1\n"
        "        return self._state, self._own()\n"
        "class Logger(keras.callbacks.Callback):\n"
        "    def _implements_train_batch_hooks(self):\n"
        "        return self.model._symbolic_build()\n"
        "def swap(layer, cls):\n"
        "    layer.__class__ = cls\n"
    )
    found = violations(package, package / "compat.py")
    assert sorted(line.split(": ", 1)[1] for line in found) == sorted([
        "import keras.src.utils", "import jax._src", "._symbolic_build",
        "override of Logger._implements_train_batch_hooks", "__class__ assignment",
    ])  # fmt: skip
