"""The README's promises: the two set-up commands each work on a fresh machine, CI runs the
README's lint and full-suite commands on a fresh environment, the examples use real options, and
the command reference is generated from the commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COGGED = [str(ROOT / "README.md"), str(ROOT / "docs" / "commands.md")]  # make docs writes them


def _bash_blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", body, flags=re.S)


def test_the_two_set_up_commands_come_first():
    """Install names both; Run it and Test each start with theirs."""
    assert _bash_blocks("Install")[:2] == ["make quickstart", "make test"]
    assert _bash_blocks("Run it")[0] == "make quickstart"
    assert _bash_blocks("Test")[0] == "make test"


def test_ci_runs_the_readme_lint_and_full_suite_on_a_fresh_environment():
    """The Test section names ``make test`` (the developer's run), then what CI runs: ``make
    lint`` and ``make test-all``, which .ci/run calls after removing any old environment."""
    assert _bash_blocks("Test")[:2] == ["make test", "make lint\nmake test-all"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("rm -rf .venv") < ci.index("make lint") < ci.index("make test-all")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("target", "steps"),
    [
        ("quickstart", ["-m venv", "pip install -e .", "bin/clipkit quickstart"]),
        ("test", ["-m venv", 'pip install -e ".[dev]"', "bin/python -m pytest"]),
        ("test-all", ["-m venv", 'pip install -e ".[dev]"', "bin/python -m pytest"]),
        ("lint", ["-m venv", 'pip install -e ".[dev]"', "bin/ruff check", "bin/mypy"]),
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


def test_the_command_reference_is_what_the_commands_print():
    """README's command table and docs/commands.md are cog blocks made from --help: a command
    or option changed without ``make docs`` fails here."""
    from cogapp import Cog

    status = Cog().main(["cog", "--check", "-I", str(ROOT / "docs"), *COGGED])
    assert status == 0, "The command reference is stale: run `make docs`."


def test_the_reference_check_sees_a_stale_page(tmp_path):
    from cogapp import Cog

    stale = tmp_path / "commands.md"
    page = (ROOT / "docs" / "commands.md").read_text()
    stale.write_text(page.replace("--batch-size", "--batch-rows", 1))
    assert Cog().main(["cog", "--check", "-I", str(ROOT / "docs"), str(stale)]) != 0
