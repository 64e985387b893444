"""The image input pipeline: read, hash, decode and preprocess in worker processes.

Known traps, measured: torch's default thread pool inside a decode worker made ToTensor and
Normalize ~30x slower (so each worker runs torch single-threaded); JPEGs are decoded at reduced
scale with Pillow's ``draft`` (about half the decode work); the transform resizes exactly once.
Workers run at the lowest CPU priority: where they share cores with a model on the CPU, the
model's threads then never wait on a preempted decoder (embed +21 % with clipkit-tiny on 2 cores).
Workers send uint8 pixels (``Encoder.prepare_image``); the model's side normalises whole
batches (see :mod:`clipkit.models.pixels`). Datasets keep their paths packed
(:mod:`clipkit.inputs.packed`), so forked workers share those pages instead of each copying them.

The workers are torch's DataLoader for the torch runtime and :mod:`clipkit.inputs.workers` for
the ONNX runtime, which must not import torch: this module imports it only for the former.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from clipkit.infra.orphans import die_with_parent
from clipkit.inputs.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    content_id,
    decode_image,
)
from clipkit.inputs.files import read_bytes
from clipkit.inputs.packed import PackedStrings
from clipkit.inputs.sources import Item

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


WORKER_NICENESS = 19  # added to the parent's niceness; Unix caps the sum at 19
REPEAT_WINDOW = 65_536  # content ids a worker remembers having decoded (skip_repeats)


@dataclass(frozen=True)
class Sample:
    """What a worker made of one item: its id (and, beside it, pixels) or why it failed.

    Content already in the output folder is hashed but not decoded: it comes without pixels,
    as does a copy of content that the same worker decoded a little earlier (``skip_repeats``).
    """

    index: int
    item_id: str = ""
    error: tuple[str, str] | None = None  # (stage, reason)


@dataclass(frozen=True)
class Batch:
    """Samples in item order, and the pixels (B, 3, H, W) of those that decoded.

    The pixels are whatever ``preprocess`` made: uint8 from ``prepare_image``, a torch tensor
    (torch runtime) or a NumPy array (ONNX runtime).
    """

    samples: list[Sample]
    pixels: Any
    pixel_row: dict[int, int]  # position in ``samples`` -> row in ``pixels``


class ImageDataset:
    """Items -> (Sample, pixels or None); already-embedded content is hashed, not decoded.

    With ``skip_repeats``, each worker also passes over content it decoded among its last
    ``REPEAT_WINDOW`` items (a folder of copies decodes each content once per worker, not once
    per copy). The batches then reach the caller in item order, so the copy it decoded arrives
    first: embed counts the others as aliases; callers that need every copy's pixels leave it
    off.
    """

    def __init__(
        self,
        items: Sequence[Item],
        *,
        known_ids: frozenset[str],
        preprocess: Callable,
        min_side: int,
        max_pixels: int,
        skip_repeats: bool = False,
    ) -> None:
        self.paths = PackedStrings(item.path or "" for item in items)  # shared by forked workers
        self.known_ids = known_ids
        self.recent: dict[str, None] | None = {} if skip_repeats else None  # per worker, FIFO
        self.preprocess = preprocess
        self.min_side = min_side
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Sample, Any]:
        try:
            data = read_bytes(self.paths[index])
        except DecodeError as error:
            return Sample(index, error=(error.stage, error.reason)), None
        item_id = content_id(data)
        if item_id in self.known_ids or (self.recent is not None and item_id in self.recent):
            return Sample(index, item_id), None
        try:
            image = decode_image(data, min_side=self.min_side, max_pixels=self.max_pixels)
            pixels = self.preprocess(image)
        except DecodeError as error:
            return Sample(index, item_id, error=(error.stage, error.reason)), None
        except Exception as error:  # a transform failing on one odd image must not end the run
            return Sample(
                index, item_id, error=("preprocess", f"{type(error).__name__}: {error}")
            ), None
        if self.recent is not None:
            self.recent[item_id] = None
            if len(self.recent) > REPEAT_WINDOW:  # a few MB per worker, whatever the input
                del self.recent[next(iter(self.recent))]
        return Sample(index, item_id), pixels


class _HashDataset:
    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = PackedStrings(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        try:
            return content_id(read_bytes(self.paths[index]))
        except DecodeError:
            return None  # reported when the item is read again for embedding


def hash_files(paths: Sequence[str], workers: int) -> list[str | None]:
    """Content ids of files (None where unreadable), read by ``workers`` processes."""
    from torch.utils.data import DataLoader, Dataset

    loader = DataLoader(
        cast(Dataset, _HashDataset(paths)),
        batch_size=64,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=decode_worker_init if workers else None,
    )
    return [item_id for batch in start_workers(loader) for item_id in batch]


def collate(samples: list[tuple[Sample, Any]]) -> Batch:
    pixel_row: dict[int, int] = {}
    arrays: list[Any] = []
    for position, (_, pixels) in enumerate(samples):
        if pixels is not None:
            pixel_row[position] = len(arrays)
            arrays.append(pixels)
    stacked: Any = None
    if arrays and isinstance(arrays[0], np.ndarray):
        stacked = np.stack(arrays)
    elif arrays:
        import torch

        stacked = torch.stack(arrays)
    return Batch([sample for sample, _ in samples], stacked, pixel_row)


# Batches in flight per decode worker of the ONNX runtime (DataLoader's prefetch_factor).
PREFETCH = 4


def image_batches(
    dataset: ImageDataset, batch_size: int, workers: int, device: str, runtime: str = "torch"
) -> Iterator[Batch]:
    """Batches in item order, prepared by ``workers`` processes (0: in this process): torch's
    DataLoader for the ``torch`` runtime, torch-free processes for ``onnx``."""
    if runtime == "onnx":
        from clipkit.inputs.workers import ordered_batches

        numbers = [
            range(s, min(s + batch_size, len(dataset))) for s in range(0, len(dataset), batch_size)
        ]
        yield from ordered_batches(
            dataset,
            collate,
            numbers,
            workers=workers,
            ahead=PREFETCH * workers,
            worker_init=decode_worker_init,
        )
        return
    import torch
    from torch.utils.data import DataLoader, Dataset

    loader = DataLoader(
        cast(Dataset, dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
        worker_init_fn=decode_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        generator=torch.Generator(),  # leave the global random stream alone (training resumes)
    )
    yield from start_workers(loader)


@dataclass(frozen=True)
class EncodedImages:
    """Embeddings of the image files that decoded, and why the others did not.

    ``vectors[j]`` (float32, on the CPU) belongs to ``paths[rows[j]]`` with content id ``ids[j]``.
    """

    vectors: np.ndarray  # (N_ok, D) float32
    rows: list[int]
    ids: list[str]
    failures: list[tuple[str, str, str]]  # (uri, stage, reason)


def encode_image_files(
    encoder: Any,
    paths: Sequence[str],
    *,
    batch_size: int = 64,
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> EncodedImages:
    """Decode, preprocess (in ``workers`` processes) and encode image files, skipping bad ones.

    ``progress`` receives the number of files handled so far after each batch.
    """
    items = [Item(uri=path, kind="image", path=path) for path in paths]
    dataset = ImageDataset(
        items,
        known_ids=frozenset(),
        preprocess=encoder.prepare_image,
        min_side=encoder.image_size[0],
        max_pixels=max_pixels,
    )
    from clipkit.score.arrays import as_numpy

    parts, rows, ids, failures, done = [], [], [], [], 0
    batches = image_batches(dataset, batch_size, workers, encoder.device.value, encoder.runtime)
    for batch in batches:
        if batch.pixels is not None:
            parts.append(as_numpy(encoder.encode_images(batch.pixels)))
        for position, sample in enumerate(batch.samples):
            if sample.error is not None:
                failures.append((paths[sample.index], *sample.error))
            elif position in batch.pixel_row:
                rows.append(sample.index)
                ids.append(sample.item_id)
        done += len(batch.samples)
        if progress is not None:
            progress(done)
    vectors = np.concatenate(parts) if parts else np.empty((0, encoder.embed_dim), np.float32)
    return EncodedImages(vectors, rows, ids, failures)


def default_workers() -> int:
    """Decode workers: one per core, at most 8 (decoding is the usual bottleneck)."""
    return max(
        1,
        min(
            8,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1),
        ),
    )


def start_workers(loader: DataLoader) -> Iterator:
    """``iter(loader)``, forking its workers while the garbage collector ignores old objects.

    A full collection in a forked worker writes to every tracked object it inherited (the
    main process's lists of items, say), copying their pages into the worker. Frozen across the
    fork, those objects stay outside the worker's collections and their pages stay shared;
    the main process unfreezes its own copies at once.
    """
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def decode_worker_init(_: int) -> None:
    """DataLoader worker start-up: one torch thread, the lowest CPU priority, SIGTERM ignored,
    and an end with the command's process, however that ends (:func:`die_with_parent`).

    torch runs its intra-op threads in lock-step, so a decoder that takes a core from one of them
    stalls them all; at nice 19 a decoder runs when the model's threads are idle or waiting for
    data. Where decoding is the bottleneck (a GPU model) the workers still get every free core,
    and the main process, which feeds the accelerator, is never queued behind them.
    """
    die_with_parent()
    torch = sys.modules.get("torch")  # the ONNX runtime's workers run without it
    if torch is not None:
        torch.set_num_threads(1)
    if hasattr(os, "nice"):  # not on Windows
        os.nice(WORKER_NICENESS)
    # A scheduler's SIGTERM goes to the whole process group: the main process turns it into an
    # orderly stop (and ends its workers), so a worker must not die of it first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
