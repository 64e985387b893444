"""The README's promises: CI runs its exact install and test commands; the code is lint-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", body, flags=re.S)


def test_the_two_set_up_commands_come_first():
    """Install names both; Run it and Test each start with theirs."""
    assert _bash_blocks("Install")[:2] == ["make quickstart", "make test"]
    assert _bash_blocks("Run it")[0] == "make quickstart"
    assert _bash_blocks("Test")[0] == "make test"


def test_ci_runs_the_readme_test_command_on_a_fresh_environment():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _bash_blocks("Test")[0] in ci
    assert ci.index("rm -rf .venv") < ci.index("make test")


@pytest.mark.parametrize(
    ("target", "steps"),
    [
        ("quickstart", ["-m venv", "pip install -e .", "bin/clipkit quickstart"]),
        ("test", ["-m venv", 'pip install -e ".[dev]"', "bin/python -m pytest"]),
    ],
)
def test_each_set_up_command_is_enough_on_a_fresh_machine(target, steps, tmp_path):
    """``make -n`` with an environment that does not exist yet: it is made, clipkit installed
    into it, then the command runs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "fresh-venv"
    command = ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    positions = [next(i for i, line in enumerate(lines) if step in line) for step in steps]
    assert positions == sorted(positions), done.stdout


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    paths = [str(ROOT / name) for name in ("clipkit", "tests", "benchmarks", "examples")]
    paths = [p for p in paths if Path(p).exists()]
    check = subprocess.run([ruff, "check", *paths], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run([ruff, "format", "--check", *paths], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


@pytest.mark.parametrize(
    "section",
    [
        "Run it",
        "Embed",
        "Index and search",
        "Train",
        "Zero-shot",
        "Audit",
        "Export to ONNX, and the runtime without torch",
        "Serve",
    ],
)
def test_readme_examples_use_real_options(section):
    from typer.testing import CliRunner

    from clipkit import cli

    commands = []
    for block in _bash_blocks(section):
        joined = block.replace("\\\n", " ")
        commands += [line.split("#")[0] for line in joined.splitlines()]
    commands = [re.sub(r"^torchrun .*? -m clipkit", "clipkit", c.strip()) for c in commands]
    commands = [re.sub(r"^\.venv/bin/clipkit", "clipkit", c) for c in commands]
    commands = [c for c in commands if c.startswith("clipkit ")]
    assert commands, section
    for command in commands:
        name = command.split()[1]
        help_text = CliRunner().invoke(cli.app, [name, "--help"], env={"COLUMNS": "200"}).stdout
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", command))
        missing = sorted(option for option in used if option not in help_text)
        assert not missing, f"README runs `{command}` with options clipkit {name} lacks"
