"""The Python API: the names the README documents, importable from the package without loading
torch until used, each service package callable as its service, and the README's example."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import clipkit
from tests.helpers import TINY, make_images

README = Path(__file__).resolve().parent.parent / "README.md"
HEAVY = ("torch", "open_clip", "faiss", "pyarrow", "torchvision", "matplotlib")
DOCUMENTED = {
    "clipkit.embed": "embed",
    "clipkit.index": "build_index",
    "clipkit.search": "search",
    "clipkit.train": "train",
    "clipkit.zeroshot": "zeroshot",
    "clipkit.audit": "audit",
    "clipkit.models": "load_model",
    "clipkit.quickstart": "quickstart",
}
SERVICES = ("embed", "search", "train", "zeroshot", "audit", "quickstart")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.e2e
def test_importing_the_services_loads_no_heavy_library():
    names = ", ".join((*SERVICES, "index", "models"))
    assert _loaded_after(f"from clipkit import {names}") == []
    assert _loaded_after("import clipkit.cli") == []


@pytest.mark.e2e
def test_using_a_name_loads_what_it_needs():
    # The embed service reads Parquet; torch only comes with a torch model (it may run on ONNX)
    assert _loaded_after("from clipkit import EmbedConfig") == ["pyarrow"]
    # A config is light (its checks run before torch); the service that runs it is not.
    assert "torch" not in _loaded_after("from clipkit import TrainConfig")
    assert "torch" in _loaded_after("from clipkit.train import train")


@pytest.mark.parametrize(("package", "name"), sorted(DOCUMENTED.items()))
def test_documented_names_resolve_to_the_service(package, name):
    module = importlib.import_module(package)
    function = getattr(module, name)
    assert callable(function) and function.__name__ == name
    assert function.__module__.startswith(package + ".")  # the defining module, not a wrapper


@pytest.mark.parametrize(
    "package",
    ["clipkit", *DOCUMENTED, "clipkit.report", "clipkit.score", "clipkit.store"],
)
def test_every_name_in_all_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} declares no public names"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_package_calls_its_service(service, monkeypatch):
    package = importlib.import_module(f"clipkit.{service}")
    seen = []
    monkeypatch.setattr(package, service, lambda *args, **kwargs: seen.append((args, kwargs)))
    package("config", progress=None)
    assert seen == [(("config",), {"progress": None})]
    assert getattr(clipkit, service) is package  # `from clipkit import embed` is this package


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    make_images(tmp_path / "photos", 6)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5
    assert all((tmp_path / line.split()[2]).is_file() for line in printed)


@pytest.mark.e2e
def test_the_readme_example_passes_mypy(tmp_path):
    """The public names are visible to type checkers (``py.typed``, and each package's
    ``TYPE_CHECKING`` imports): mypy, as ``make lint`` configures it, finds no error in the
    README's example, and sees the types of what it calls."""
    code = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    example = tmp_path / "example.py"
    example.write_text(code + "reveal_type(result)\nreveal_type(embed)\n")
    mypy = Path(sys.executable).parent / "mypy"
    done = subprocess.run(
        [str(mypy), "--config-file", str(README.parent / "pyproject.toml"), str(example)],
        capture_output=True,
        text=True,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stdout
    assert 'Revealed type is "clipkit.search.run.SearchResult"' in done.stdout
    assert 'Revealed type is "def (config: clipkit.embed.config.EmbedConfig' in done.stdout


def test_paths_are_str_or_path_everywhere_and_wrong_types_fail_at_construction(tmp_path):
    """#25 item 8: `SearchConfig(index_dir="index")` failed deep inside with `'str' / 'str'`."""
    from clipkit.audit import AuditConfig
    from clipkit.embed import EmbedConfig, embed
    from clipkit.errors import UsageError
    from clipkit.index import IndexConfig, build_index
    from clipkit.search import SearchConfig, search
    from clipkit.train import TrainConfig
    from clipkit.zeroshot import ZeroShotConfig

    make_images(tmp_path / "photos", 3)
    folder = str(tmp_path)  # every path below as a plain str
    embed(EmbedConfig(sources=f"{folder}/photos", out_dir=f"{folder}/emb", model=TINY, workers=0))
    build_index(IndexConfig(emb_dir=f"{folder}/emb", out_dir=f"{folder}/index"))
    config = SearchConfig(texts="a red square", index_dir=f"{folder}/index", k=2)
    assert config.index_dir == tmp_path / "index" and config.texts == ("a red square",)
    assert len(search(config).results[0].hits) == 2
    assert SearchConfig(images=[f"{folder}/photos/img0000.jpg"]).images == (
        tmp_path / "photos" / "img0000.jpg",
    )
    assert TrainConfig(data=tmp_path, out=tmp_path / "run", model=TINY).data == folder
    assert AuditConfig(data=folder).data == tmp_path
    assert ZeroShotConfig(images=folder, labels="a,b").images == tmp_path
    cases = [
        (lambda: SearchConfig(index_dir=3), "SearchConfig.index_dir must be a path, not int"),
        (lambda: SearchConfig(k="10"), "SearchConfig.k must be an int, not str"),
        (lambda: SearchConfig(k=True), "SearchConfig.k must be an int, not bool"),
        (lambda: IndexConfig(emb_dir=None, out_dir=folder), "IndexConfig.emb_dir must be a path"),
        (
            lambda: TrainConfig(data=folder, out=folder, model=TINY, lr="1e-4"),
            "TrainConfig.lr must be a number, not str",
        ),
        (
            lambda: EmbedConfig(sources=[1], out_dir=folder, model=TINY),
            "EmbedConfig.sources must be a tuple whose items are each a str, not list",
        ),
    ]
    for make, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            make()


def test_an_enum_field_takes_its_value_and_refuses_others_by_name():
    from clipkit.embed import EmbedConfig
    from clipkit.errors import UsageError
    from clipkit.inputs.sources import Kind

    assert EmbedConfig(sources=("x",), out_dir="o", model="m", kind="image").kind is Kind.IMAGE
    assert EmbedConfig(sources=("x",), out_dir="o", model="m", kind=Kind.TEXT).kind is Kind.TEXT
    with pytest.raises(UsageError, match=r"EmbedConfig\.kind must be one of 'auto', 'image'"):
        EmbedConfig(sources=("x",), out_dir="o", model="m", kind="imgae")
