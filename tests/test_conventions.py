"""Conventions every command shares: --strict on bulk commands (and the services' ``strict``),
one skipped-input list, one --workers default, one --format per output shape wherever a result
is printed, -o/--out by one rule, -m wherever a model is named, one --precision, on/off flags
as pairs, defaults in one notation, paths typed as paths, CLIPKIT_MODEL wherever -m is taken,
exit 2 for usage errors, and --help readable at 80 columns."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli, config
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
    options = [(name, _option(c, "--workers")) for name, c in _commands().items()]
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


FOLDER_OUT = {"train", "embed", "index", "export"}  # make a run, embeddings, an index, an export
ROWS_OUT = {"zeroshot", "audit"}  # make one file of rows


def test_out_is_where_the_command_writes_what_it_makes():
    outs = {name: _option(c, "--out") for name, c in _commands().items()}
    outs = {name: option for name, option in outs.items() if option is not None}
    assert set(outs) == FOLDER_OUT | ROWS_OUT
    for name, option in outs.items():
        assert sorted(option.opts) == ["--out", "-o"] and option.type.name == "path", name
        if name in FOLDER_OUT:
            assert "folder" in option.help.lower(), name
        else:
            assert "/".join(config.REPORT_SUFFIXES) in option.help, name


@pytest.mark.parametrize("name", sorted(FOLDER_OUT | ROWS_OUT))
def test_an_out_of_the_other_kind_is_refused_before_the_work(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for n, image in enumerate(make_images(tmp_path / "data", 2)):
        image.with_suffix(".txt").write_text(f"caption {n}")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    model = ["-m", TINY, "--workers", "0"]
    args = {
        "train": ["train", "data", "-o", "a-file", *model],
        "embed": ["embed", "data", "-o", "a-file", *model],
        "index": ["index", "data", "-o", "a-file"],
        "export": ["export", "-m", TINY, "-o", "a-file"],
        "zeroshot": ["zeroshot", "data", "--labels", "a,b", "-o", "a-folder", *model],
        "audit": ["audit", "data", "-o", "a-folder", *model],
    }[name]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    message = " ".join(result.stderr.split())
    if name in FOLDER_OUT:
        assert "Error: a-file is a file, not a folder." in message
    else:
        assert "Error: Cannot tell the format of a-folder from its suffix." in message


# Commands whose result is their artifact: progress and a summary go to stderr, stdout stays empty.
ARTIFACT_COMMANDS = ("train_cmd", "embed_cmd", "index_cmd", "export_cmd", "serve_cmd")


def test_every_command_that_prints_a_result_takes_format_and_the_others_print_nothing():
    with_format = {name for name, c in _commands().items() if _option(c, "--format")}
    assert with_format == {"quickstart", "search", "zeroshot", "audit", "models", "models info"}
    for module in ARTIFACT_COMMANDS:
        source = inspect.getsource(getattr(cli, module))
        assert not re.search(r"\bstdout\b|typer\.echo|print_rows", source), module
    for module in ("quickstart_cmd", "search_cmd", "zeroshot_cmd", "audit_cmd", "models_cmd"):
        assert re.search(
            r"\bstdout\b|typer\.echo|print_rows", inspect.getsource(getattr(cli, module))
        )


def test_a_model_is_named_with_m_everywhere():
    """``models info SPEC`` inspects the spec it is given; every other command takes -m."""
    for name, command in _commands().items():
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        named = [p for p in arguments if p.metavar == "SPEC" or p.name in ("model", "spec")]
        assert named == [] or name == "models info", name
    assert _option(_commands()["export"], "-m") is not None


def test_one_precision_option_and_vocabulary():
    vocabulary = {*config.COMPUTE_PRECISIONS, *config.STORED_PRECISIONS, *config.EXPORT_PRECISIONS}
    assert vocabulary == {"auto", "fp32", "fp16", "bf16", "int8"}
    with_precision = set()
    for name, command in _commands().items():
        for param in command.params:
            opts = [*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())]
            if any("precision" in opt or "dtype" in opt for opt in opts):
                assert opts == ["--precision"], (name, opts)
                assert set(param.type.choices) <= vocabulary, name
                with_precision.add(name)
    assert with_precision == {"train", "embed", "export"}


def _flags():
    for name, command in _commands().items():
        for param in command.params:
            if getattr(param, "is_flag", False) and param.name not in ("help", "version"):
                yield name, param


def test_every_on_off_flag_comes_as_a_pair():
    flags = list(_flags())
    assert len(flags) >= 20
    assert [(name, p.opts) for name, p in flags if not p.secondary_opts] == []


def test_defaults_are_shown_in_one_notation():
    """click's ``[default: …]``: a value, or a description in parentheses (show_default),
    never a default written into the help text."""
    for name, command in _commands().items():
        for param in command.params:
            help_text = getattr(param, "help", None) or ""
            assert not re.search(r"default|\[[^\]]*\]\.?$", help_text, re.IGNORECASE), (
                name,
                param.name,
                help_text,
            )
            if param.default is None and isinstance(param.show_default, str):
                assert param.show_default and not param.show_default.startswith("(")


def test_a_default_description_shows_in_the_help():
    result = runner.invoke(cli.app, ["train", "--help"], terminal_width=200)
    assert "[default: (10); x>=1]" in result.stdout  # --epochs: chosen when left out


# Values that are not paths; every other parameter of every command is typed as a path.
NOT_PATHS = {
    "ray_address",  # host:port of a Ray cluster
    "model", "spec", "query", "labels", "templates", "weights", "host", "token", "device",
    "image_column", "text_column", "max_memory", "filter", "allowed_host",
    "index",  # serve --index [NAME=]DIR: a name for the route, then the folder
}  # fmt: skip


def test_paths_are_typed_as_paths():
    for name, command in _commands().items():
        for param in command.params:
            if param.type.name in ("text", "str"):
                assert param.name in NOT_PATHS, (name, param.name)
            if param.name in ("out", "out_dir", "data", "sources", "images", "folder"):
                assert param.type.name == "path", (name, param.name)


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
