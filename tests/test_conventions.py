"""Conventions every command shares: --strict on bulk commands (and the services' ``strict``),
one skipped-input list, one --workers default, one --format per output shape, CLIPKIT_MODEL
wherever -m is taken, exit 2 for usage errors, and --help readable at 80 columns."""

from __future__ import annotations

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli
from clipkit.errors import SkippedInputsError
from tests.helpers import TINY, embed_args, make_images

runner = CliRunner()
BULK = ("embed", "train", "zeroshot", "audit")
BROKEN = 22  # more than the 20 skipped inputs every command lists


def _commands() -> dict:
    """Every command by its full name (``models info`` too)."""
    group = typer.main.get_command(cli.app)
    found = {}
    for name, command in group.commands.items():
        found[name] = command
        for sub, subcommand in getattr(command, "commands", {}).items():
            found[f"{name} {sub}"] = subcommand
    return found


def _option(command, name: str):
    return next((p for p in command.params if name in getattr(p, "opts", ())), None)


def test_bulk_commands_take_strict():
    commands = _commands()
    assert [name for name in BULK if _option(commands[name], "--strict") is None] == []


def test_every_workers_option_has_one_default():
    # serve's --workers are whole server processes, each loading the models (default 1)
    options = [(name, _option(c, "--workers")) for name, c in _commands().items()]
    options = [(name, option) for name, option in options if name != "serve"]
    defaults = {(o.default, o.help) for _, o in options if o is not None}
    assert len([o for _, o in options if o is not None]) >= 5  # embed ... quickstart
    assert len(defaults) == 1, defaults
    assert next(iter(defaults))[0] is None  # one per core, at most 8


def test_every_format_option_is_one_of_the_shared_shapes():
    shapes = {("table", "json"), ("table", "json", "jsonl", "csv")}
    for name, command in _commands().items():
        option = _option(command, "--format")
        if option is not None:
            choices = tuple(option.type.choices)
            assert choices in shapes, name


def test_every_model_option_reads_clipkit_model():
    with_model = {name: _option(c, "--model") for name, c in _commands().items()}
    with_model = {name: option for name, option in with_model.items() if option is not None}
    assert {"train", "embed", "search", "zeroshot", "audit"} <= set(with_model)
    assert {name: o.envvar for name, o in with_model.items()} == dict.fromkeys(
        with_model, "CLIPKIT_MODEL"
    )


def test_search_takes_the_model_from_the_environment(monkeypatch, tmp_path):
    """The README promises CLIPKIT_MODEL for every command with -m; search ignored it."""
    seen = []

    def fake_search(config, progress=None):
        seen.append(config)
        raise SkippedInputsError(0, None, None)  # any ClipkitError: stop after the wiring

    monkeypatch.setattr("clipkit.search.run.search", fake_search)
    monkeypatch.setenv("CLIPKIT_MODEL", TINY)
    runner.invoke(cli.app, ["search", "a dog", "--embeddings", str(tmp_path)])
    assert seen[0].model == TINY


@pytest.mark.parametrize(
    "args",
    [
        ["search", "a dog", "--embeddings", ".", "-k", "0"],
        ["zeroshot", ".", "--labels", "a,b", "-k", "0"],
        ["search", "--embeddings", "."],  # no query at all
        ["search", "a dog", "--embeddings", ".", "--index", "."],
        ["search", "a dog", "--embeddings", ".", "--weights", "1,2"],  # one part, two weights
        ["zeroshot", ".", "--labels", "a,b", "--reject-threshold", "1.5"],
        ["zeroshot", ".", "--labels", "a,b", "--labels-file", "x.txt"],
        ["audit", ".", "--fpr", "2"],
        ["train", ".", "-o", "run", "--lambda", "2"],
        ["train", ".", "-o", "run", "--epochs", "2", "--steps", "2"],
        ["embed", ".", "-o", "out", "--batch-size", "0"],
    ],
)
def test_usage_errors_exit_2_everywhere(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli.app, [*args, "-m", TINY])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def _broken_images(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / f"broken{n:02d}.png").write_bytes(b"not a png " + bytes([n]))


def _bulk_args(command: str, tmp_path, data) -> list[str]:
    """Arguments for ``command`` on ``data``, writing under ``tmp_path``."""
    common = ["-m", TINY, "--device", "cpu", "--workers", "0"]
    return {
        "embed": ["embed", str(data), "-o", str(tmp_path / "out"), "--kind", "image", *common],
        "train": [
            "train",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--val-split",
            "0",
            *common,
        ],
        "zeroshot": ["zeroshot", str(data), "--labels", "noise,shapes", *common],
        "audit": ["audit", str(data), *common],
    }[command]


@pytest.mark.parametrize("command", BULK)
def test_strict_exits_1_after_the_work_and_lists_the_skipped_inputs_as_everywhere(
    command, tmp_path
):
    data = tmp_path / "data"  # 4 good images and BROKEN unreadable ones, all captioned
    images = make_images(data, 4)
    _broken_images(data, BROKEN)
    for n, path in enumerate([*images, *sorted(data.glob("broken*"))]):
        path.with_suffix(".txt").write_text(f"caption {n}")
    relaxed = runner.invoke(cli.app, _bulk_args(command, tmp_path / "relaxed", data))
    assert relaxed.exit_code == 0, relaxed.output
    listed = [line for line in relaxed.stderr.splitlines() if line.startswith("  skipped ")]
    assert len(listed) == 20 and all("broken" in line for line in listed)
    assert f"… and {BROKEN - 20} more" in relaxed.stderr
    strict = runner.invoke(cli.app, [*_bulk_args(command, tmp_path / "strict", data), "--strict"])
    assert strict.exit_code == 1, strict.output
    assert f"Error: {BROKEN} inputs were skipped" in strict.stderr
    assert strict.stderr.count("  skipped ") == 20  # the same list, before the error


def test_a_python_caller_s_strict_embed_raises_after_writing(tmp_path):
    """EmbedConfig.strict was read by nothing: a Python caller who set it was ignored."""
    from clipkit.embed import EmbedConfig, embed
    from tests.helpers import rows

    make_images(tmp_path / "data", 3)
    _broken_images(tmp_path / "data", 2)
    config = EmbedConfig(
        sources=(str(tmp_path / "data"),),
        out_dir=tmp_path / "out",
        model=TINY,
        device="cpu",
        workers=0,
        strict=True,
    )
    with pytest.raises(SkippedInputsError, match="2 inputs were skipped") as raised:
        embed(config)
    assert raised.value.result.embedded == 3
    assert len(rows(tmp_path / "out")) == 3  # the work is saved before the error


def test_strict_passes_when_nothing_is_skipped(tmp_path):
    make_images(tmp_path / "data", 3)
    args = embed_args(str(tmp_path / "data"), str(tmp_path / "out"), "--strict")
    assert runner.invoke(cli.app, args).exit_code == 0


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_at_80_columns_shows_every_option_name_whole(name):
    command = _commands()[name]
    result = runner.invoke(
        cli.app, [*name.split(), "--help"], terminal_width=80, env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    words = set(result.stdout.replace(",", " ").replace("/", " ").split())
    names = [
        opt
        for p in command.params
        for opt in (*p.opts, *getattr(p, "secondary_opts", ()))
        if opt.startswith("-")
    ]
    assert names and [n for n in names if n not in words] == []
    assert "…" not in result.stdout


def test_the_80_column_check_sees_a_cut_name():
    """The check above can fail: an ellipsis-cut name is not among the words."""
    words = set(["--init-tempera…", "Start", "temperature"])
    assert "--init-temperature" not in words


def test_broken_image_fixture_is_really_unreadable(tmp_path):
    _broken_images(tmp_path, 1)
    with pytest.raises(Exception):  # noqa: B017 - PIL raises its own UnidentifiedImageError
        Image.open(tmp_path / "broken00.png").load()


def test_the_command_list_fits_80_columns_uncut():
    result = runner.invoke(cli.app, ["--help"], terminal_width=80, env={"COLUMNS": "80"})
    commands = result.stdout.split("Commands:", 1)[1]
    assert "..." not in commands and "…" not in commands, commands
