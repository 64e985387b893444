"""Training data: verified image-caption pairs, a train/validation split, seeded batches.

Every random choice (the epoch's order, the caption drawn for an image, the augmentation) is
a function of (seed, epoch, index), never of worker count or process history, so a resumed run
and a run split over N processes see exactly the batches of one uninterrupted process.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from clipkit.errors import InputError
from clipkit.infra.distributed import World
from clipkit.inputs.decode import DecodeError, decode_image
from clipkit.inputs.files import read_bytes
from clipkit.inputs.packed import PackedGroups, PackedStrings
from clipkit.inputs.pairs import Pair, read_pairs
from clipkit.inputs.pipeline import decode_worker_init, start_workers

Skip = tuple[str, str, str]  # (uri, stage, reason)


@dataclass(frozen=True)
class TrainPairs:
    """Usable training and validation pairs, and every pair skipped on the way."""

    train: tuple[Pair, ...]
    val: tuple[Pair, ...]
    skipped: tuple[Skip, ...]


def load_pairs(
    data: str,
    *,
    val_data: str | None,
    val_split: float,
    seed: int,
    batch_size: int,
    image_size: int,
    workers: int,
    image_column: str | None = None,
    text_column: str | None = None,
) -> TrainPairs:
    """Read, verify (decode every image once) and split the pairs; check they can train.

    Raises:
        InputError: a missing column, fewer than 2 usable pairs, or a batch size larger than
            the training set (all before any training starts).
    """
    source = read_pairs(data, image_column=image_column, text_column=text_column)
    train, skipped = verify_images(source.pairs, image_size, workers)
    skipped = list(source.skipped) + skipped
    if val_data is not None:
        val_source = read_pairs(val_data, image_column=image_column, text_column=text_column)
        val, val_skipped = verify_images(val_source.pairs, image_size, workers)
        skipped += list(val_source.skipped) + val_skipped
    else:
        train, val = split_pairs(train, val_split, seed)
    _check_trainable(data, train, val, batch_size, skipped)
    return TrainPairs(tuple(train), tuple(val), tuple(skipped))


def split_pairs(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded split by image: (train, validation); at least 2 validation pairs if any."""
    if fraction <= 0 or len(pairs) < 4:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    size = max(2, round(fraction * len(pairs)))
    val = sorted(order[:size])
    train = sorted(order[size:])
    return [pairs[i] for i in train], [pairs[i] for i in val]


def verify_images(
    pairs: Sequence[Pair], image_size: int, workers: int
) -> tuple[list[Pair], list[Skip]]:
    """Decode every image once (reduced-scale JPEG decode); drop and list those that fail."""
    loader = DataLoader(
        _DecodeCheck([pair.image for pair in pairs], image_size),
        batch_size=64,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=decode_worker_init if workers else None,
        generator=torch.Generator(),  # leave the global random stream alone
    )
    errors = [error for batch in start_workers(loader) for error in batch]
    good = [pair for pair, error in zip(pairs, errors, strict=True) if error is None]
    skipped = [
        (pair.image, *error) for pair, error in zip(pairs, errors, strict=True) if error is not None
    ]
    return good, skipped


class _DecodeCheck(Dataset):
    def __init__(self, images: Sequence[str], image_size: int) -> None:
        self.images, self.image_size = PackedStrings(images), image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[str, str] | None:
        try:
            decode_image(read_bytes(self.images[index]), min_side=self.image_size)
        except DecodeError as error:
            return error.stage, error.reason
        return None


def _check_trainable(data, train, val, batch_size, skipped) -> None:
    where = f" ({len(skipped)} skipped; see _failures.parquet in the run folder)" if skipped else ""
    if len(train) < 2:
        raise InputError(
            f"{data} has {len(train)} usable training pair(s){where}; training needs at least 2.",
            "Give each image a non-empty caption (a same-name .txt file or a table row).",
        )
    if batch_size < 2:
        raise InputError(
            f"--batch-size {batch_size} is too small.",
            "The contrastive loss compares each pair with the others in its batch: use >= 2.",
        )
    if batch_size > len(train):
        raise InputError(
            f"--batch-size {batch_size} is larger than the {len(train)} training pairs{where}.",
            f"Use --batch-size {len(train)} or less, or add data.",
        )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (epoch, sample): independent streams for every draw."""
    return hash((seed, epoch, index)) & (2**63 - 1)


class PairDataset(Dataset):
    """(epoch, index) -> (pixels (3, H, W) or None, caption, skip or None).

    The pixels are what ``transform`` makes: uint8 from the trainer's split augmentation.
    Paths and captions are packed, so the persistent workers share them rather than copy them.
    """

    def __init__(
        self, pairs: Sequence[Pair], transform: Callable, seed: int, image_size: int
    ) -> None:
        self.images = PackedStrings(pair.image for pair in pairs)
        self.captions = PackedGroups(pair.captions for pair in pairs)
        self.transform, self.seed, self.image_size = transform, seed, image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image_uri = self.images[index]
        draw = sample_seed(self.seed, epoch, index)
        choice = random.Random(draw).randrange(self.captions.size(index))
        caption = self.captions.item(index, choice)
        try:
            image = decode_image(read_bytes(image_uri), min_side=self.image_size)
            # The augmentation draws from torch's global generator: seed it per sample, and
            # leave the caller's stream untouched (workers=0 runs this in the trainer).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(draw)
                pixels = self.transform(image)
        except DecodeError as error:
            return None, caption, (image_uri, error.stage, error.reason)
        return pixels, caption, None


def collate_pairs(samples):
    """-> (pixels (B, 3, H, W), captions (B,), skips) over the samples that decoded."""
    kept = [(pixels, caption) for pixels, caption, _ in samples if pixels is not None]
    skips = [skip for _, _, skip in samples if skip is not None]
    pixels = torch.stack([p for p, _ in kept]) if kept else None
    return pixels, [caption for _, caption in kept], skips


@dataclass(frozen=True)
class Schedule:
    """How the global step count maps to epochs and batches."""

    pairs: int
    batch_size: int
    total_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.pairs // self.batch_size  # the last partial batch is dropped, as open_clip

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


class SeededBatches:
    """Batch keys for steps [start, total): this rank's share of each global batch.

    Global batch ``s`` is ``perm(epoch)[pos·B : (pos+1)·B]``; rank ``r`` of ``W`` takes the
    r-th contiguous slice, so gathering features in rank order rebuilds the global batch.
    """

    def __init__(self, schedule: Schedule, seed: int, start: int, world: World) -> None:
        if schedule.batch_size % world.size:
            raise InputError(
                f"--batch-size {schedule.batch_size} does not split over {world.size} processes.",
                f"Use a multiple of {world.size}: the batch size is the global batch.",
            )
        self.schedule, self.seed, self.start, self.world = schedule, seed, start, world

    def __len__(self) -> int:
        return self.schedule.total_steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        schedule, world = self.schedule, self.world
        share = schedule.batch_size // world.size
        cached_epoch, order = -1, list[int]()
        for step in range(self.start, schedule.total_steps):
            epoch = schedule.epoch_of(step)
            if epoch != cached_epoch:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                order = torch.randperm(schedule.pairs, generator=generator).tolist()
                cached_epoch = epoch
            position = (step % schedule.steps_per_epoch) * schedule.batch_size
            batch = order[position : position + schedule.batch_size]
            mine = batch[world.rank * share : (world.rank + 1) * share]
            yield [(epoch, index) for index in mine]
