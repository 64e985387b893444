"""``clipkit embed --engine ray`` (issue #38): on one Ray instance for the test process, the
output folder equals a local run's; a unit whose worker raises, or whose process dies while
writing, is given again and its shard written once; a stopped run, run again, embeds only
what is missing; without Ray, or with GPUs a cluster lacks, a usage error.

Each run starts its actors (a Python process that loads the model: about 6 s here), so the
runs that start several are end-to-end tests (``make test-all``, CI)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipkit import cli, store
from clipkit.embed import EmbedConfig, embed, on_ray
from clipkit.engine import cluster
from clipkit.errors import UsageError
from clipkit.inputs.synthetic import write_captioned_shapes
from tests.helpers import TINY

SHARD_ROWS = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """24 captioned shapes (texts, then images: shards of 16 rows), a copy of one image under
    another name (an alias), and an unreadable image (a failure, sorted last)."""
    root = tmp_path_factory.mktemp("ray-inputs")
    write_captioned_shapes(root / "data", 24, seed=2)
    first = sorted((root / "data").glob("*.png"))[0]
    (root / "data" / "copy-of-first.png").write_bytes(first.read_bytes())
    (root / "data" / "zz-broken.png").write_bytes(b"not a png")
    return root / "data"


def _config(inputs: Path, out: Path, **options) -> EmbedConfig:
    return EmbedConfig(sources=(str(inputs),), out_dir=out, model=TINY, workers=0, device="cpu",
                       runtime="torch", shard_rows=SHARD_ROWS, **options)  # fmt: skip


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "emb"
    return embed(_config(inputs, out))


def _shards(folder: Path) -> dict[str, dict]:
    """Each shard's rows (id, uri, kind, text) and vectors, by file name."""
    found = {}
    for path in sorted(folder.glob("part-*.parquet")):
        table = store.parquet.read(path)
        rows = {name: table.column(name).to_pylist() for name in ("id", "uri", "kind", "text")}
        rows["vectors"] = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        found[path.name] = rows
    return found


def _side_tables(folder: Path) -> dict[str, list]:
    tables = {}
    for name in (store.ALIASES_FILE, store.FAILURES_FILE, store.FILES_FILE):
        rows = store.parquet.read(folder / name).to_pylist()
        tables[name] = sorted(rows, key=lambda row: sorted((k, str(v)) for k, v in row.items()))
    return tables


def _assert_same_folder(mine: Path, expected: Path) -> None:
    got, wanted = _shards(mine), _shards(expected)
    assert list(got) == list(wanted)  # the same shard names
    for name, rows in wanted.items():
        for column in ("id", "uri", "kind", "text"):
            assert got[name][column] == rows[column], (name, column)
        np.testing.assert_allclose(got[name]["vectors"], rows["vectors"], atol=1e-5)
    assert _side_tables(mine) == _side_tables(expected)
    leftovers = [p.name for p in mine.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_ray_run_writes_the_folder_a_local_run_writes(ray_instance, inputs, local, tmp_path):
    result = embed(_config(inputs, tmp_path / "emb", engine="ray"))
    # a row per distinct content; every other copy (a repeated caption, the copied image) an
    # alias
    texts = [path.read_text() for path in inputs.glob("*.txt")]
    images = [path.read_bytes() for path in inputs.glob("*.png") if path.name != "zz-broken.png"]
    distinct = len(set(texts)) + len(set(images))
    assert result.embedded == local.embedded == distinct
    assert result.aliases == local.aliases == len(texts) + len(images) - distinct > 0
    assert [f[0] for f in result.failures] == [f[0] for f in local.failures]
    assert result.failures[0][0].endswith("zz-broken.png")
    assert result.shards_written == local.shards_written == -(-distinct // SHARD_ROWS)
    assert result.engine == "ray" and "1 Ray actor(s), 1 node(s)" in result.device
    _assert_same_folder(tmp_path / "emb", local.out_dir)


class FailsOnce(on_ray.UnitEmbedder):
    """The first try of unit 1 raises; that of unit 2 dies (its process) while writing."""

    markers: str = ""  # a folder: a first try leaves a file there, which the retry sees

    def run(self, unit):
        marker = Path(self.markers) / str(unit.number)
        if unit.number in (1, 2) and not marker.exists():
            marker.touch()
            if unit.number == 1:
                raise RuntimeError("an injected failure")
            # a staged file, as atomic writes make them
            staged, _ = tempfile.mkstemp(".tmp", ".part-00002.parquet.", self.config.out_dir)
            os.write(staged, b"PAR1 half a shard")
            os._exit(1)  # the actor's process dies mid-write
        return super().run(unit)


@pytest.mark.e2e  # actors' processes die and restart (20 s)
def test_units_that_fail_once_are_given_again_and_written_once(
    ray_instance, inputs, local, tmp_path, monkeypatch
):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors get the class
    (tmp_path / "markers").mkdir()
    worker = type("FailsOnceHere", (FailsOnce,), {"markers": str(tmp_path / "markers")})
    monkeypatch.setattr(on_ray, "UnitEmbedder", worker)
    result = embed(_config(inputs, tmp_path / "emb", engine="ray"))
    assert sorted(p.name for p in (tmp_path / "markers").iterdir()) == ["1", "2"]  # both failed
    assert result.embedded == local.embedded
    assert result.shards_written == local.shards_written
    _assert_same_folder(tmp_path / "emb", local.out_dir)  # each shard once, nothing staged left


@pytest.mark.e2e  # two runs, two pools of actors (20 s)
def test_a_stopped_run_run_again_embeds_only_the_rest(ray_instance, inputs, local, tmp_path):
    def stop_after_the_first_unit(report):
        if report.done >= SHARD_ROWS:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(_config(inputs, tmp_path / "emb", engine="ray"), stop_after_the_first_unit)
    kept = store.read_existing(tmp_path / "emb").ids
    assert len(kept) >= SHARD_ROWS  # the first unit's shard at least
    again = embed(_config(inputs, tmp_path / "emb", engine="ray"))
    assert again.embedded == local.embedded - len(kept)  # only what was missing
    assert store.read_existing(tmp_path / "emb").ids == store.read_existing(local.out_dir).ids
    inputs_count = len([p for p in inputs.iterdir() if p.name != "zz-broken.png"])
    assert again.already_present + again.aliases + again.embedded == inputs_count


def test_without_ray_the_engine_is_a_usage_error_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as when not installed
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    result = CliRunner().invoke(
        cli.app, ["embed", str(image), "-o", str(tmp_path / "emb"), "-m", TINY, "--engine", "ray"]
    )
    assert result.exit_code == 2, result.output
    assert 'pip install "clipkit[ray]"' in result.stderr


def test_the_pool_leaves_ray_cpus_and_asks_gpus_only_of_a_cluster_with_them():
    cpus = cluster.Cluster(address="", cpus=8, gpus=0, nodes=2)
    half = cluster.CPU_ACTOR_SHARE
    assert cluster.size_pool(cpus, None, units=100) == cluster.Pool(8, cpus=half, gpus=0.0)
    assert 8 * half < 8  # the pool never reserves every CPU
    assert cluster.size_pool(cpus, None, units=3).workers == 3  # never more than units
    gpus = cluster.Cluster(address="", cpus=32, gpus=4, nodes=2)
    assert cluster.size_pool(gpus, None, units=100) == cluster.Pool(4, cpus=1.0, gpus=1.0)
    assert cluster.size_pool(gpus, 0.5, units=100).workers == 8
    assert cluster.size_pool(gpus, 0, units=100).gpus == 0.0  # CPU actors asked for
    with pytest.raises(UsageError, match="has no GPU"):
        cluster.size_pool(cpus, 1, units=100)


# Two Ray nodes on this machine (ray.cluster_utils.Cluster: a head and one more, one CPU each),
# in a process of its own: a process joins one Ray instance only. It prints the result.
TWO_NODES = """
import json, sys
from pathlib import Path
from ray.cluster_utils import Cluster
from clipkit.embed import EmbedConfig, embed
from clipkit import store

nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
nodes.add_node(num_cpus=1)
nodes.wait_for_nodes()
import ray
ray.init(address=nodes.address)
source, out = sys.argv[1], Path(sys.argv[2])
result = embed(EmbedConfig(sources=(source,), out_dir=out, model=sys.argv[3], workers=0,
                           device="cpu", runtime="torch", shard_rows=int(sys.argv[4]),
                           engine="ray"))
print(json.dumps({"device": result.device, "embedded": result.embedded}))
ray.shutdown()
nodes.shutdown()
"""


@pytest.mark.e2e  # a two-node Ray cluster of its own (about 30 s)
def test_two_nodes_both_run_units_and_the_folder_equals_a_local_run(inputs, local, tmp_path):
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", TWO_NODES, str(inputs), str(tmp_path / "emb"), TINY,
         str(SHARD_ROWS)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "2 Ray actor(s), 2 node(s)" in result["device"]
    assert result["embedded"] == local.embedded
    _assert_same_folder(tmp_path / "emb", local.out_dir)
