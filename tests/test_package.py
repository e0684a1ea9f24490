"""The package as a library and as an installed program: no side effects on import, imports that run one
way, a fast --help, and a wheel that works outside the checkout with its shipped configs."""

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from inat_keras.config import ConfigError, shipped_config

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "inat_keras"
# Which folders a folder may import from: the pipeline's order, data before models before training.
LOW = {"data", "models", "analysis", "outputs"}
ALLOWED = {
    "data": {"data"},
    "models": {"models"},
    "analysis": {"analysis"},
    "outputs": {"outputs"},
    "inference": {"inference"} | LOW,
    "training": {"training", "inference"} | LOW,
    "sweeps": {"sweeps", "training", "inference"} | LOW,
    "perf": {"perf", "training", "inference"} | LOW,
    "serving": {"serving", "inference"} | LOW,
    "study": {"study", "serving", "sweeps", "training", "inference"} | LOW,
}
TOP = {"config", "errors", "files", "locks", "keras_compat", "machine"}  # the modules at the top that every folder may use
THIRD_PARTY = "import keras, keras_cv, tensorflow, jax, wandb, sweeps, sklearn, matplotlib, scipy, requests, PIL"


def run_python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in env and k != "XLA_FLAGS"}
    environ.update({k: v for k, v in env.items() if v is not None})
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_importing_the_package_changes_no_environment_variable():
    code = "import os; before = dict(os.environ); import inat_keras; print(before == dict(os.environ))"
    assert run_python(code) == "True"


def test_importing_every_module_changes_nothing_that_its_libraries_do_not():
    """TensorFlow and keras-cv set variables of their own on import; our modules add none."""
    code = (
        f"import os, importlib, pkgutil; {THIRD_PARTY}; before = dict(os.environ); import inat_keras; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(inat_keras.__path__, 'inat_keras.')]; "
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}; print(sorted(changed))"
    )
    assert run_python(code) == "[]"


def module_imports(path: Path) -> set[str]:
    """The inat_keras folders and top-level modules that one module imports (relative imports resolved)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(parts[: len(parts) - node.level])
            target = base + (node.module.split(".") if node.module else [])
            names = [target + [alias.name] for alias in node.names] if not target else [target]
            found |= {name[0] for name in names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("inat_keras."):
            found.add(node.module.split(".")[1])
    return found


def module_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, at any depth of its code (a function's
    import too: a loop held together by a lazy import is still a loop)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import x` may name a module
                    targets.add(f"{module}.{alias.name}")
                targets.add(module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = targets
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def test_no_module_imports_itself_round_about():
    graph, cycles = module_graph(), []

    def visit(name, trail):
        for target in sorted(graph[name]):
            if target in trail:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in done:
                visit(target, trail + [target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    packages = {name for name in graph if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    real = [c for c in cycles if not set(c) & packages]  # a package and the modules it re-exports are not a loop
    assert not real, real


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder not in ALLOWED:
            continue
        for target in module_imports(path) - TOP - ALLOWED[folder]:
            wrong.append(f"{path.relative_to(ROOT)} imports inat_keras.{target}")
    assert not wrong, wrong
    for path in (PACKAGE / "config").glob("*.py"):  # light: the command line reads configs before TensorFlow loads
        assert module_imports(path) <= {"config", "errors", "files", "models"}, path  # models: backbones, plain data
    layouts = ast.parse((PACKAGE / "models" / "backbones.py").read_text())
    imported = {node.module for node in ast.walk(layouts) if isinstance(node, ast.ImportFrom)}
    assert imported == {"dataclasses"} and not any(isinstance(node, ast.Import) for node in ast.walk(layouts))


def test_help_and_argument_errors_do_not_load_the_frameworks():
    code = (
        "import sys; from inat_keras import cli; parser = cli.build_parser(); parser.format_help(); "
        "print(sorted(m for m in ('tensorflow', 'jax', 'keras', 'keras_cv') if m in sys.modules))"
    )
    assert run_python(code) == "[]"


def test_a_missing_shipped_config_is_an_error_naming_it():
    assert shipped_config("scratch.yaml").is_file()
    with pytest.raises(ConfigError, match=r"the shipped config nowhere\.yaml is missing from .*configs"):
        shipped_config("nowhere.yaml")


@pytest.mark.large
@pytest.mark.backend_independent
def test_a_wheel_installed_outside_the_checkout_runs_with_its_shipped_configs(tmp_path):
    """Non-editable install into a fresh virtual environment (its dependencies seen through a .pth file)."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True, cwd=tmp_path)
    [wheel] = wheels.glob("inat_keras-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--ignore-installed",
               "-q", str(wheel)]  # ignore: the checkout's own editable install is visible through the .pth
    subprocess.run(install, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*command):
        done = subprocess.run(command, cwd=outside, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = run(python, "-c", "import inat_keras.config as c; print(c.shipped_config('finetune.yaml'))").strip()
    assert where.startswith(site) and not where.startswith(str(ROOT))
    cli = str(venv / "bin" / "inat-keras")
    assert "parameters (exact):" in run(cli, "info", "--image-size", "94")
    printed = run(cli, "finetune", "--demo", "--print-config")
    assert "image_size: 384" not in printed and "demo: true" in printed  # the file's demo_overrides applied


def test_the_command_line_prints_no_tensorflow_chatter():
    """TensorFlow's C++ start-up lines are muted unless TF_CPP_MIN_LOG_LEVEL asks for them."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-m", "inat_keras", "info", "--image-size", "20"], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: image size 20 is too small for kernel sizes [3, 3, 3, 3, 3]: the feature map is 3x3 before block 3 "
        "(kernel 3x3 then 2x2 pool); the smallest image size that works is 94"
    ]


def test_every_package_folder_ships_in_the_wheel():
    """A new sub-package missing from pyproject's list installs in editable mode and breaks only in a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "inat_keras").rglob("__init__.py")}
    assert folders - listed == set()
