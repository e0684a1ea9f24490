import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from inat_keras.perf.cpu_tuning import configure_xla_flags, malloc_environment

REPO = Path(__file__).resolve().parent.parent


def test_xla_flags_are_added_per_model_and_the_users_win():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    configure_xla_flags(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type="
    configure_xla_flags(environ, "efficientnet", base="--xla_dump_to=/tmp/x")
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=reduce"
    environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    configure_xla_flags(environ, "efficientnet")
    assert environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"


@pytest.mark.parametrize(
    "before, user_flags, expected",
    [
        ("", "", "--xla_cpu_experimental_ynn_fusion_type=reduce"),  # JAX not started yet: switched
        ("import jax; jax.devices(); ", "", ""),  # XLA read them already: nothing changes
        ("", "--xla_cpu_experimental_ynn_fusion_type=eltwise", "--xla_cpu_experimental_ynn_fusion_type=eltwise"),
    ],
)
def test_a_model_family_picks_its_flags_only_before_jax_starts(before, user_flags, expected):
    code = (f"import os, inat_keras; {before}from inat_keras.perf.cpu_tuning import prepare_for; "
            "prepare_for('efficientnet'); print(os.environ['XLA_FLAGS'])")  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": user_flags, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


CONV_GRADIENTS = """
import jax, numpy as np
from jax import lax
def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
x, w = np.zeros((8, 111, 111, 64), "float32"), np.zeros((3, 3, 64, 64), "float32")
grads = jax.jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
hlo = grads.lower(x, w).compile().as_text()
print("convolution" in hlo, "__ynn_fusion" in hlo)
"""


def test_convolution_gradients_compile_to_xlas_own_kernels():
    """The CNN's tuning (what the CLI applies before JAX starts): no convolution goes to YNNPACK."""
    code = "from inat_keras.perf.cpu_tuning import prepare_for; prepare_for('cnn')\n" + CONV_GRADIENTS
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc tunable")
def test_the_command_line_restarts_itself_with_the_malloc_tunable():
    assert malloc_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's choice stays
    code = (
        "from inat_keras.perf.cpu_tuning import restart_with_malloc_tunables; restart_with_malloc_tunables(); "
        "import os; print(os.environ['GLIBC_TUNABLES'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"


def test_every_entry_point_restarts_before_the_command_runs(monkeypatch):
    import inat_keras.__main__ as entry
    from inat_keras import cli
    from inat_keras.perf import cpu_tuning

    calls = []
    monkeypatch.setattr(cpu_tuning, "restart_with_malloc_tunables", lambda: calls.append("restart"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("command") or 0)
    assert entry.main() == 0 and calls == ["restart", "command"]
    scripts = (REPO / "pyproject.toml").read_text()
    assert 'inat-keras = "inat_keras.__main__:main"' in scripts
    assert "from inat_keras.__main__ import main" in (REPO / "run.py").read_text()
