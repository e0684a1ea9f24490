"""The documentation says what the code does: the options page is the generated one, every command shown in the
README and docs/ is one the program accepts (and a training command's config resolves), the README stays short,
and CI runs exactly the README's test command."""

import re
import shlex
from pathlib import Path

import pytest

from inat_keras.cli import build_parser, kind_config
from inat_keras.config.reference import markdown

# Files, configs, folders and reports: nothing here depends on the backend (conftest.py).
pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every `python run.py ...` line inside a ```bash block."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = line.split(" # ")[0].strip()
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    while words and "=" in words[0] and not words[0].startswith("-"):  # KERAS_BACKEND=jax ...
                        words = words[1:]
                    if words[:2] == ["python", "run.py"]:
                        found.append((page.name, shlex.join(words[2:])))
    return found


def test_the_options_page_is_generated_from_the_code():
    assert (ROOT / "docs" / "options.md").read_text() == markdown(), "run: python -m inat_keras.config.reference > docs/options.md"


def test_the_docs_show_commands():
    pages = {page for page, _ in shown_commands()}
    assert len(shown_commands()) > 40 and "README.md" in pages and len(pages) >= 8


@pytest.mark.parametrize("page, command", shown_commands())
def test_every_command_in_the_docs_is_accepted(page, command, monkeypatch):
    """Parsed by the real parser; a training command's config (its YAML, demo section and flags) also validates."""
    monkeypatch.chdir(ROOT)
    try:
        args = build_parser().parse_args(shlex.split(command))
    except SystemExit:
        pytest.fail(f"{page}: `python run.py {command}` is refused by the parser")
    made_earlier = args.command in ("scratch", "finetune") and args.config and args.config.startswith("runs/")
    if args.command in ("scratch", "finetune") and not made_earlier:  # runs/...: a file an earlier command writes
        from inat_keras.training.kinds import KINDS

        kind_config(KINDS[args.command], args)


def test_the_readme_is_short_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    test_command = next(line for line in readme.splitlines() if line.startswith('pip install -e ".[test]"'))
    assert test_command in (ROOT / ".ci" / "run").read_text()
