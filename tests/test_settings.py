"""The settings file (``~/.config/clipkit/config.toml`` or ``$CLIPKIT_CONFIG``): the defaults it
sets, what outranks it, how a bad file is reported, and that commands say where a setting came
from."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from clipkit import cli
from clipkit.cli import settings
from clipkit.store import read_stamp
from tests.helpers import TINY, make_images

runner = CliRunner()
SMALL = "clipkit-small:random"


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    """Writes the default settings file (under a fresh $XDG_CONFIG_HOME) and returns it."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    path = home / "clipkit" / "config.toml"
    path.parent.mkdir(parents=True)
    return path


@pytest.fixture
def texts(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("a red circle")
    (folder / "b.txt").write_text("a blue square")
    return folder


def test_the_file_s_model_is_embed_s_default_and_is_named(settings_file, texts, tmp_path):
    settings_file.write_text(f'model = "{TINY}"\nruntime = "torch"\n')
    result = runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.output
    assert read_stamp(tmp_path / "emb").spec == TINY
    said = " ".join(result.stderr.split())
    assert f"model {TINY} (from {settings_file})" in said
    assert f"runtime torch (from {settings_file})" in said


def test_the_environment_outranks_the_file_and_the_command_line_outranks_both(
    settings_file, texts, tmp_path, monkeypatch
):
    settings_file.write_text(f'model = "{SMALL}"\n')
    monkeypatch.setenv("CLIPKIT_MODEL", TINY)
    result = runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "env")])
    assert result.exit_code == 0, result.output
    assert read_stamp(tmp_path / "env").spec == TINY
    assert f"model {TINY} (from $CLIPKIT_MODEL)" in " ".join(result.stderr.split())

    given = ["embed", str(texts), "-o", str(tmp_path / "given"), "-m", TINY]
    monkeypatch.setenv("CLIPKIT_MODEL", SMALL)
    result = runner.invoke(cli.app, given)
    assert result.exit_code == 0, result.output
    assert read_stamp(tmp_path / "given").spec == TINY
    assert "Using" not in result.stderr  # nothing to explain: the user typed it


def test_a_recorded_model_outranks_the_file(settings_file, texts, tmp_path):
    emb = tmp_path / "emb"
    made = runner.invoke(cli.app, ["embed", str(texts), "-o", str(emb), "-m", TINY])
    assert made.exit_code == 0, made.output
    settings_file.write_text(f'model = "{SMALL}"\n')  # would refuse these embeddings
    result = runner.invoke(cli.app, ["search", "a red circle", "--embeddings", str(emb)])
    assert result.exit_code == 0, result.output
    assert f"with {TINY}" in " ".join(result.stderr.split())


def test_the_file_s_model_replaces_the_built_in_fallback_of_zeroshot(settings_file, monkeypatch):
    from clipkit.zeroshot import run as zeroshot_run

    seen = {}

    def fake(config, progress=None):
        seen["config"] = config
        raise zeroshot_run.InputError("stop here", "")

    monkeypatch.setattr(zeroshot_run, "zeroshot", fake)
    settings_file.write_text(f'model = "{SMALL}"\n')
    runner.invoke(cli.app, ["zeroshot", "somewhere", "--labels", "cat,dog"])
    assert seen["config"].model is None  # an embeddings folder's own model would still win
    assert seen["config"].default_model == SMALL


def test_no_file_means_the_built_in_defaults(texts, tmp_path):
    assert settings.read_settings() == {}
    assert settings.fallback_model(None) == settings.Setting(settings.DEFAULT_MODEL_SPEC)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('modle = "x"\n', "Unknown setting 'modle'"),
        ("model = 3\n", "Setting 'model'"),
        ('model = "  "\n', "Setting 'model'"),
        ('runtime = "tensorrt"\n', "is not one of auto, torch, onnx"),
        ('device = "quantum"\n', "Setting device = 'quantum'"),  # D12: was exit 1 at the end
        ('engine = "spark"\n', "is not one of local, ray"),
        ('model = "./runs/gone"\n', "runs/gone does not exist"),  # D12: the file went unnamed
        ('model = "hf-hub:"\n', "Setting model = 'hf-hub:'"),
        ("model = \n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_a_usage_error_naming_it_but_help_still_works(
    settings_file, texts, tmp_path, content, message
):
    settings_file.write_text(content)
    result = runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "emb")])
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert message in said and "Hint:" in said
    assert str(settings_file) in "".join(result.stderr.split())  # a long path may wrap
    assert "Traceback" not in result.output
    assert not (tmp_path / "emb").exists()
    assert runner.invoke(cli.app, ["embed", "--help"]).exit_code == 0


def test_the_file_s_engine_is_embed_s_default(settings_file, texts, tmp_path, monkeypatch):
    """``engine = "ray"`` reaches the service as --engine ray would (the run itself:
    tests/test_embed_ray.py); the command line outranks it."""
    seen = []

    def stop_at_once(config, progress=None):
        seen.append(config)
        raise KeyboardInterrupt  # the run itself is not this test's

    monkeypatch.setattr("clipkit.embed.run.embed", stop_at_once)
    settings_file.write_text('engine = "ray"\n')
    runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "emb"), "-m", TINY])
    runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "emb"), "-m", TINY,
                            "--engine", "local"])  # fmt: skip
    assert [config.engine for config in seen] == ["ray", "local"]


def test_a_named_file_must_exist(monkeypatch, texts, tmp_path):
    monkeypatch.setenv("CLIPKIT_CONFIG", str(tmp_path / "missing.toml"))
    result = runner.invoke(cli.app, ["embed", str(texts), "-o", str(tmp_path / "emb")])
    assert result.exit_code == 2
    assert "$CLIPKIT_CONFIG" in result.stderr and "does not exist" in result.stderr


def test_clipkit_config_names_the_file(monkeypatch, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('device = "cpu"\n')
    monkeypatch.setenv("CLIPKIT_CONFIG", str(path))
    result = runner.invoke(cli.app, ["models", "info", TINY])
    assert result.exit_code == 0, result.output
    assert f"device cpu (from {path})" in " ".join(result.stderr.split())


def test_a_byte_order_mark_is_no_error(settings_file, monkeypatch):
    """D12 of issue #37: a file saved with a UTF-8 BOM (Windows editors) was not valid TOML."""
    settings_file.write_bytes(b"\xef\xbb\xbf" + b'device = "cpu"\n')
    result = runner.invoke(cli.app, ["models", "info", TINY])
    assert result.exit_code == 0, result.output
    assert "device cpu (from" in " ".join(result.stderr.split())


def test_a_relative_model_path_is_read_from_the_file_s_folder(
    settings_file, texts, tmp_path, tiny_encoder, monkeypatch
):
    """The file names one model from wherever a command runs (issue #40 item 4)."""
    from clipkit.models.checkpoints import write_checkpoint

    beside = settings_file.parent / "models" / "tiny.safetensors"
    write_checkpoint(beside, tiny_encoder.model.state_dict(), tiny_encoder.checkpoint_meta())
    settings_file.write_text('model = "models/tiny.safetensors"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(cli.app, ["embed", str(texts), "-o", "emb", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert f"Using model {beside} (from {settings_file})" in said


@pytest.mark.parametrize(
    "command",
    [["zeroshot", "PHOTOS", "--labels", "a,b"], ["search", "a red square", "--in", "PHOTOS"]],
    ids=["zeroshot", "search-in"],
)
def test_a_model_the_file_names_that_does_not_load_names_the_file(settings_file, tmp_path, command):
    """D12 of issue #37: `zeroshot` and `search --in` with the file's `model = "runs/tux"`,
    run where there is no runs/tux, said only that it is no architecture."""
    settings_file.write_text('model = "runs/tux"\n')
    (tmp_path / "photos").mkdir()
    make_images(tmp_path / "photos", 2)
    args = [str(tmp_path / "photos") if word == "PHOTOS" else word for word in command]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 1
    said = " ".join(result.stderr.split())
    assert "'runs/tux' is neither an existing path nor a known architecture" in said
    squeezed = "".join(result.stderr.split())  # a long path may wrap anywhere
    assert f"Themodelistheone{settings_file}names." in squeezed
