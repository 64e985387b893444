"""The CLI shell: instant --help, version, error mapping to Error/Hint and exit codes, models."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from clipkit import __version__, cli
from clipkit.cli import render
from clipkit.cli.app import handles_errors
from clipkit.cli.options import ModelOption
from clipkit.errors import ClipkitError
from clipkit.infra.progress import ProgressReport
from tests.helpers import TINY

runner = CliRunner()
HEAVY = ("torch", "open_clip", "faiss", "pyarrow", "fastapi", "uvicorn", "ray")


@pytest.mark.e2e
def test_importing_the_cli_imports_no_heavy_library():
    code = f"import sys, clipkit.cli; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


COMMANDS = [
    "quickstart",
    "train",
    "embed",
    "index",
    "search",
    "zeroshot",
    "audit",
    "export",
    "serve",
    "models",
]


def _listed_commands(help_text: str) -> list[str]:
    """The names in the help's Commands section (not words elsewhere in the help)."""
    section = help_text.split("Commands:", 1)[1].splitlines()[1:]
    return [line.split()[0] for line in section if line.startswith("  ") and line.split()]


@pytest.mark.e2e
def test_help_lists_every_command_in_workflow_order_without_heavy_imports():
    code = (
        "import sys; from clipkit.cli import main; sys.argv = ['clipkit', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    help_text, heavy = out.stdout.rsplit("HEAVY=", 1)
    assert _listed_commands(help_text) == COMMANDS
    assert heavy.strip() == ""


def test_the_command_list_check_can_fail():
    assert _listed_commands("Usage: x\n\nIndex, search and audit.\n\nCommands:\n  embed  E.\n") == [
        "embed"
    ]


@pytest.mark.e2e
def test_version_via_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "clipkit", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"clipkit {__version__}"


def test_models_info_json():
    result = runner.invoke(cli.app, ["models", "info", TINY, "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["embed_dim"] == 128 and info["context_length"] == 32
    assert len(info["fingerprint"]) == 16


def test_models_list_with_filter_json():
    result = runner.invoke(cli.app, ["models", "--filter", "clipkit", "--format", "json"])
    assert result.exit_code == 0, result.output
    specs = {row["spec"] for row in json.loads(result.stdout)}
    assert specs == {TINY, "clipkit-small:random"}


def test_model_spec_from_environment(monkeypatch):
    seen = {}

    @cli.app.command("probe-model", hidden=True)
    def probe(model: ModelOption = "default") -> None:
        seen["model"] = model

    monkeypatch.setenv("CLIPKIT_MODEL", TINY)
    try:
        assert runner.invoke(cli.app, ["probe-model"]).exit_code == 0
        assert seen["model"] == TINY
    finally:
        cli.app.registered_commands.pop()


def test_clipkit_error_becomes_error_and_hint_with_exit_1():
    result = runner.invoke(cli.app, ["models", "info", "ViT-B-23:random"])
    assert result.exit_code == 1
    assert "Error: Unknown model architecture 'ViT-B-23'" in result.stderr
    assert "Hint: Did you mean" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_offline_pretrained_model_error():
    result = runner.invoke(cli.app, ["models", "info", "ViT-B-32:laion2b_s34b_b79k"])
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def test_malicious_checkpoint_is_refused_by_the_cli(tmp_path):
    import torch

    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w')",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    result = runner.invoke(cli.app, ["models", "info", str(tmp_path / "evil.pt")])
    assert result.exit_code == 1
    assert "Error: Refusing to load" in result.stderr
    assert not marker.exists()


def test_usage_errors_exit_2():
    assert runner.invoke(cli.app, ["models", "info"]).exit_code == 2
    assert runner.invoke(cli.app, ["no-such-command"]).exit_code == 2
    assert runner.invoke(cli.app, ["models", "--format", "xml"]).exit_code == 2


def _failing_command(error: Exception):
    app = typer.Typer()

    @app.command()
    @handles_errors
    def boom() -> None:
        raise error

    return app


def test_unexpected_exceptions_are_reported_without_traceback():
    result = runner.invoke(_failing_command(ZeroDivisionError("division by zero")))
    assert result.exit_code == 1
    assert "Error: Unexpected ZeroDivisionError: division by zero" in result.stderr
    assert "CLIPKIT_DEBUG=1" in result.stderr
    assert "Traceback" not in result.output


def test_debug_mode_reraises(monkeypatch):
    monkeypatch.setenv("CLIPKIT_DEBUG", "1")
    error = ClipkitError("broken", "fix it")
    result = runner.invoke(_failing_command(error))
    assert result.exit_code == 1 and result.exception is error


@pytest.mark.e2e
def test_debug_traceback_shows_no_locals(monkeypatch):
    code = (
        "import typer\nfrom clipkit import cli\n"
        "def boom():\n    secret_local_tensor = 'SECRET-VALUE'\n    raise RuntimeError('x')\n"
        "from clipkit.cli.app import handles_errors\n"
        "cli.app.command('boom')(handles_errors(boom))\ncli.main()\n"
    )
    env = {**__import__("os").environ, "CLIPKIT_DEBUG": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, "boom"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "RuntimeError" in out.stderr
    assert "SECRET-VALUE" not in out.stderr


def test_a_stage_s_rate_counts_from_the_previous_report(monkeypatch):
    """Services report a stage first when its first batch is done; timing the stage from that
    report showed rates of a million items/s for a stage done in one batch."""
    from rich.progress import Progress

    clock = iter([100.0, 104.0, 106.0, 108.0])  # the bar opens; then 3 reports
    monkeypatch.setattr(render.time, "perf_counter", lambda: next(clock))
    shown: dict[int, str] = {}
    real_update = Progress.update

    def update(self, task, **fields):
        shown[task] = fields.get("figures", shown.get(task))
        real_update(self, task, **fields)

    monkeypatch.setattr(Progress, "update", update)
    with render.progress_bar() as report:
        # the first stage, done in one batch, 4 s after the bar opened
        report(ProgressReport("images", 8, 8))
        report(ProgressReport("captions", 2, 4))  # 2 s after the last report
        report(ProgressReport("captions", 4, 4))
    assert list(shown.values()) == ["2.0/s", "1.0/s"]  # 8 in 4 s; 4 in 4 s


def test_a_service_s_figures_are_shown_instead_of_the_rate():
    figures = {"loss": 1.23456, "temperature": 0.07, "samples_per_s": 12.34, "grad_norm": 3.5}
    assert render.figures_text(figures) == "loss 1.235  t 0.0700  12.3 samples/s  grad_norm 3.5"


def test_error_text_is_shown_as_written_not_as_markup():
    """A message quoting a path such as photos/[2024]/ used to lose the brackets to Rich."""
    error = ClipkitError("Cannot read photos/[2024]/a.jpg.", "Check [bold]this[/bold].")
    result = runner.invoke(_failing_command(error))
    assert "Error: Cannot read photos/[2024]/a.jpg." in result.stderr
    assert "Hint: Check [bold]this[/bold]." in result.stderr


SUBCOMMANDS = [[name] for name in COMMANDS] + [["models", "info"]]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_help_names_values_in_words_not_python_types(command):
    """Typer's placeholders are type names (``--out <path>``, ``<list[Path]>``, ``{data}``);
    the help says TEXT, PATH, INTEGER, FLOAT, SPEC or the choices instead."""
    result = runner.invoke(cli.app, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    for python_name in ("<str>", "<path>", "<int", "<float", "<bool>", "list[", "Path]"):
        assert python_name not in result.output, f"{python_name} in clipkit {command} --help"
    assert not re.search(r"\{[a-z_]+\}", result.output)  # {data}: an argument in Typer's braces


def test_help_placeholders_read_as_click_writes_them():
    shown = runner.invoke(cli.app, ["embed", "--help"], terminal_width=100).output
    assert "Usage: clipkit embed [OPTIONS] SOURCES..." in shown
    assert "-o, --out PATH" in shown and "-m, --model SPEC" in shown
    assert "--batch-size INTEGER" in shown and "--kind [auto|image|text]" in shown
    assert "--include-hidden " in shown and "--include-hidden <" not in shown  # a flag: no value
    search = runner.invoke(cli.app, ["search", "--help"], terminal_width=100).output
    assert "Usage: clipkit search [OPTIONS] [QUERY]" in search


def test_models_info_says_default_unless_a_device_was_asked_for():
    shown = runner.invoke(cli.app, ["models", "info", TINY, "-f", "json"])
    assert json.loads(shown.stdout)["device"] == "cpu (default)"
    asked = runner.invoke(cli.app, ["models", "info", TINY, "--device", "cpu", "-f", "json"])
    assert json.loads(asked.stdout)["device"] == "cpu (requested)"
