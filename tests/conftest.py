"""Shared fixtures: no network, empty caches, the GPU marker, the tiny encoder, and the costly
things built once per test process (a trained run, an ONNX export) with the xdist groups that
keep the tests sharing one on one worker."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import TINY, install_export

# Under pytest-xdist each core runs a worker: torch's own threads would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Set before anything imports huggingface_hub, which reads these once at import time: tests
# must never touch the network nor a developer's real cache.
os.environ["HF_HUB_OFFLINE"] = "1"
_HF_HOME = tempfile.TemporaryDirectory(prefix="clipkit-test-hf-")  # removed at exit
os.environ["HF_HOME"] = _HF_HOME.name
# ONNX exports go to a cache of the session's own, never the developer's.
_ONNX_CACHE = tempfile.TemporaryDirectory(prefix="clipkit-test-onnx-")
os.environ["CLIPKIT_ONNX_CACHE"] = _ONNX_CACHE.name
# No developer's settings file: an empty config folder of the session's own.
_CONFIG_HOME = tempfile.TemporaryDirectory(prefix="clipkit-test-config-")
os.environ["XDG_CONFIG_HOME"] = _CONFIG_HOME.name
os.environ.pop("CLIPKIT_CONFIG", None)
os.environ.pop("CLIPKIT_RUNTIME", None)
os.environ.pop("CLIPKIT_MODEL", None)
os.environ.pop("CLIPKIT_DEBUG", None)


# Session fixtures that take tens of seconds to build. Under pytest-xdist (make test: -n auto
# --dist loadgroup) every test that uses one runs in one group on one worker, so each is built
# once per run. Tests that share a module-scoped fixture run together too (a fixture split over
# workers is built on each); every other test goes to whichever worker is free.
COSTLY = ("finished_run", "tiny_export")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = _shared_fixture_groups(items)
    for item in items:
        group = groups.get(item.nodeid)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    # The groups first: each builds a costly fixture (tens of seconds) and runs on one worker,
    # so started last they would leave the other worker idle at the end; the many short tests
    # then fill in around them.
    items.sort(key=lambda item: item.nodeid not in groups)
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the device machine with -m gpu)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


def _shared_fixture_groups(items: list[pytest.Item]) -> dict[str, str]:
    """Each test's xdist group: its COSTLY session fixture, else the tests of its module
    linked by the module-scoped fixtures they share (connected components); none without."""
    groups: dict[str, str] = {}
    parent: dict[str, str] = {}  # union-find over "module::fixture" names

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    shared: dict[str, list[str]] = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        costly = [name for name in COSTLY if name in names]
        if costly:
            groups[item.nodeid] = costly[0]
            continue
        definitions = getattr(item, "_fixtureinfo", None)
        module = item.nodeid.split("::")[0]
        scoped = [
            f"{module}::{name}"
            for name in names
            if definitions is not None
            and (found := definitions.name2fixturedefs.get(name))
            and found[-1].scope == "module"
        ]
        for name in scoped[1:]:
            parent[root(name)] = root(scoped[0])
        if scoped:
            shared[item.nodeid] = scoped
    for nodeid, scoped in shared.items():
        groups[nodeid] = root(scoped[0])
    return groups


@pytest.fixture(scope="session")
def tiny_encoder():
    """The built-in tiny architecture with its seeded random weights, on the CPU."""
    from clipkit.models import load_model

    return load_model(TINY, device="cpu")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """Captioned coloured shapes (200 pairs) and a 4-colour class tree (8 images each)."""
    from clipkit.inputs.synthetic import write_captioned_shapes, write_class_tree

    root = tmp_path_factory.mktemp("shapes")
    write_captioned_shapes(root / "data", 200, seed=0)
    write_class_tree(root / "classes", 8)
    return root


@pytest.fixture(scope="session")
def few_shapes(tmp_path_factory):
    """48 captioned shapes in ``data``: for training runs that need several epochs, not data."""
    from clipkit.inputs.synthetic import write_captioned_shapes

    root = tmp_path_factory.mktemp("few-shapes")
    write_captioned_shapes(root / "data", 48, seed=1)
    return root


@pytest.fixture(scope="session")
def finished_run(shapes):
    """A tiny model trained for 4 epochs on ``shapes`` (about 20 s): (config, TrainResult)."""
    from clipkit.train import TrainConfig, train

    config = TrainConfig(
        data=str(shapes / "data"),
        out=str(shapes / "run"),
        model=TINY,
        epochs=4,
        batch_size=32,
        eval_classes=str(shapes / "classes"),
        wise_ft=0.5,
        workers=0,
    )
    return config, train(config)


@pytest.fixture(scope="module")
def ray_instance():
    """A Ray instance for a module's tests (about 6 s to start), as ``--engine ray`` finds one
    already running in a notebook: one CPU (one actor: each loads the model, and the suite's
    other worker needs the second core), no dashboard, quiet. Stopped after the module: its
    daemons would take CPU from the rest of the suite. Two actors on two nodes:
    test_embed_ray's two-node test."""
    import logging

    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """clipkit-tiny (seeded random weights) exported to ONNX once per test process (about
    20 s): (torch encoder, export folder). Tests read it; one that needs it in its ONNX cache
    takes ``cached_tiny_export``."""
    from clipkit.models import load_model
    from clipkit.models.onnx_export import export_onnx

    encoder = load_model(TINY, device="cpu")
    folder = tmp_path_factory.mktemp("onnx-export") / "tiny"
    export_onnx(encoder, folder)
    return encoder, folder


@pytest.fixture
def cached_tiny_export(tiny_export) -> Path:
    """The test's own ONNX cache holding clipkit-tiny's export, as ``clipkit export -m
    clipkit-tiny:random`` leaves it (the export folder by fingerprint, and ``specs.json``)."""
    return install_export(*tiny_export)


@pytest.fixture(autouse=True, scope="session")
def no_fsync():
    """Files are written and renamed as always, but not flushed to the disk first: what fsync
    buys (the file whole after a power cut) no test can observe, and it costs 40 ms a file
    here, in every checkpoint, shard and index the suite writes. Processes a test starts
    still flush."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("clipkit.infra.atomic._fsync", lambda path: None)
        yield


@pytest.fixture(autouse=True)
def no_training_plot(monkeypatch):
    """A training run inside a test draws no curves (a second of matplotlib each, in 50-odd
    runs). The runs whose curves tests look at are built by session and module fixtures
    (``finished_run``, the quickstart's, test_train_queue_ssl's), which pytest sets up before
    this fixture: they draw theirs."""
    monkeypatch.setattr("clipkit.plots.plot_training", lambda records, path: path)


@pytest.fixture(autouse=True)
def empty_onnx_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty ONNX cache: which runtime ``auto`` picks never depends
    on what an earlier test exported (a test that wants an export makes one)."""
    monkeypatch.setenv("CLIPKIT_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    # and so do the folder caches of `clipkit search --in`
    monkeypatch.setenv("CLIPKIT_FOLDER_CACHE", str(tmp_path_factory.mktemp("folder-cache")))


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright, or a skip where neither is installed."""
    from tests.browser import find_chromium

    executable = find_chromium()
    playwright_api = pytest.importorskip("playwright.sync_api")
    if executable is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    with playwright_api.sync_playwright() as driver:
        try:
            launched = driver.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu"],
            )
        except Exception as error:  # noqa: BLE001  (a browser that cannot start: skip)
            pytest.skip(f"Chromium at {executable} does not start: {error}")
        yield launched
        launched.close()
