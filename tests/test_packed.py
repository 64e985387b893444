"""What forked decode workers inherit: strings packed into two objects (``clipkit.packed``), and
the main process's objects frozen across the fork (``pipeline.start_workers``), so that workers
share those pages instead of copying them. The memory this saves is measured by
``benchmarks/bench_worker_memory.py``."""

from __future__ import annotations

import gc

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from clipkit.inputs import pipeline
from clipkit.inputs.filenames import as_text
from clipkit.inputs.packed import PackedGroups, PackedStrings
from clipkit.inputs.sources import Item
from clipkit.train.data import PairDataset
from tests.helpers import make_images

STRINGS = ["a.jpg", "", "café/ünïcode 猫.png", "caf\udce9.jpg", as_text(b"/x/caf\xe9.jpg"), "z"]


def test_packed_strings_give_back_every_string_exactly():
    packed = PackedStrings(iter(STRINGS))  # any iterable, read once
    assert len(packed) == len(STRINGS)
    assert list(packed) == STRINGS
    assert [packed[i] for i in range(len(STRINGS))] == STRINGS
    assert packed[-1] == "z" and packed[-len(STRINGS)] == "a.jpg"
    for index in (len(STRINGS), -len(STRINGS) - 1):
        with pytest.raises(IndexError):
            packed[index]


def test_empty_packed_strings():
    packed = PackedStrings([])
    assert len(packed) == 0 and list(packed) == []
    with pytest.raises(IndexError):
        packed[0]


def test_packed_strings_are_two_objects_however_many_strings():
    # The point of packing: no per-string object whose reference count a worker would write.
    packed = PackedStrings(f"/data/images/{i:06d}.jpg" for i in range(10_000))
    held = [type(part).__name__ for part in gc.get_referents(packed) if part is not PackedStrings]
    assert sorted(held) == ["bytearray", "ndarray"]
    assert packed[1234] == "/data/images/001234.jpg"


def test_packed_groups_keep_each_group_and_its_order():
    groups = [("a dog", "a brown dog"), ("",), (), ("猫",)]
    packed = PackedGroups(groups)
    assert len(packed) == 4
    assert [packed[i] for i in range(4)] == groups
    assert [packed.size(i) for i in range(4)] == [2, 1, 0, 1]
    assert packed.item(0, 1) == "a brown dog" and packed.item(3, 0) == "猫"
    for index, position in ((0, 2), (2, 0), (4, 0), (-1, 0)):
        with pytest.raises(IndexError):
            packed.item(index, position)


class _FreezeCount(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return gc.get_freeze_count()


def _freeze_counts_in_workers(loader_iterator) -> list[int]:
    return [count for batch in loader_iterator for count in batch.tolist()]


def test_workers_start_with_the_main_process_objects_frozen():
    loader = DataLoader(_FreezeCount(), batch_size=1, num_workers=2)
    assert gc.get_freeze_count() == 0
    assert min(_freeze_counts_in_workers(pipeline.start_workers(loader))) > 0
    assert gc.get_freeze_count() == 0  # the main process collects its own garbage as before
    # Without start_workers a worker's collections walk every inherited object.
    assert _freeze_counts_in_workers(iter(loader)) == [0, 0]


def _freeze_count(_image) -> torch.Tensor:
    return torch.tensor(gc.get_freeze_count())


def test_embed_decode_workers_are_started_frozen(tmp_path):
    paths = make_images(tmp_path, 2)
    items = [Item(uri=str(p), kind="image", path=str(p)) for p in paths]
    dataset = pipeline.ImageDataset(
        items, known_ids=frozenset(), preprocess=_freeze_count, min_side=8, max_pixels=10**6
    )
    assert isinstance(dataset.paths, PackedStrings)
    batches = pipeline.image_batches(dataset, batch_size=1, workers=2, device="cpu")
    assert all(batch.pixels.item() > 0 for batch in batches)


def test_pair_dataset_draws_captions_from_the_packed_groups(tmp_path):
    from clipkit.inputs.pairs import Pair

    paths = make_images(tmp_path, 3)
    pairs = [
        Pair(str(paths[0]), ("one",)),
        Pair(str(paths[1]), ("two", "deux", "zwei")),
        Pair(str(tmp_path / "missing.jpg"), ("gone",)),
    ]
    dataset = PairDataset(pairs, transform=lambda image: torch.zeros(1), seed=3, image_size=8)
    assert len(dataset) == 3
    assert dataset[(0, 0)][1] == "one"
    drawn = {dataset[(epoch, 1)][1] for epoch in range(40)}
    assert drawn == {"two", "deux", "zwei"}  # every caption of an image gets drawn
    pixels, caption, skip = dataset[(0, 2)]
    assert pixels is None and caption == "gone"
    assert skip[0] == str(tmp_path / "missing.jpg") and skip[1] == "read"
