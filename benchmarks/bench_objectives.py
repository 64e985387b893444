"""Benchmark ``clipkit train``'s objectives (issue #27).

Speed: samples/s of ``clipkit-small`` with FLIP's patch masking at ratios 0, 0.5 and 0.75, same
data, same steps, same run (the goal: mask 0.5 at >= 1.6x the samples/s of mask 0).

Quality: ``clipkit-tiny`` trained from scratch with each objective (clip; siglip; clip + mask
0.5 with an unmasked last epoch; clip + queue 4096; clip + each image SSL term), same data,
same steps, seeds 0-2, on two sets: the generated shapes, and emoji: Noto's colour emoji
(drawn by designers) captioned with their Unicode CLDR names (written by people, one per
emoji), both from Debian packages (fonts-noto-color-emoji, unicode-data), so the set builds
offline; zero-shot on held-out emoji whose name has one of a few words (flag, heart, ...).
Reported: validation recall@1/5/10 (the mean of image->text and text->image) and zero-shot
top-1 on held-out images.

    python benchmarks/bench_objectives.py speed --steps 15 --batch-size 64
    python benchmarks/bench_objectives.py quality --sets shapes --shapes 4800 --epochs 2
    python benchmarks/bench_objectives.py quality --sets emoji --epochs 6 --queue 1024  # apt
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, write_results

from clipkit.inputs.synthetic import write_captioned_shapes, write_class_tree
from clipkit.train import TrainConfig, train

RATIOS = (0.0, 0.5, 0.75)
# name -> TrainConfig options added to plain CLIP training
OBJECTIVES = {
    "clip": {},
    "siglip": {"loss": "siglip"},
    "clip + mask 0.5": {"mask_ratio": 0.5, "unmasked_epochs": 1},
    "clip + queue": {"queue": 4096},  # --queue sets K; the row names it
    "clip + simclr": {"image_ssl": "simclr"},
    "clip + simsiam": {"image_ssl": "simsiam"},
    "clip + byol": {"image_ssl": "byol"},
    "clip + swav": {"image_ssl": "swav"},
}
# Debian's fonts-noto-color-emoji and unicode-data: the emoji and their names, offline
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
# zero-shot labels: words of the names, each held-out emoji's name having exactly one
EMOJI_CLASSES = ("flag", "face", "heart", "hand", "button", "woman", "man", "person")


def masking_speed(data: Path, out: Path, steps: int, batch_size: int, rounds: int) -> list[dict]:
    """samples/s (training only: evaluation and checkpoints are not counted) per mask ratio,
    the best of ``rounds`` runs each, the ratios interleaved so that drift hits them alike."""
    best: dict[float, float] = {}
    for round_ in range(rounds):
        for ratio in RATIOS:
            result = train(
                TrainConfig(
                    data=str(data), out=str(out / f"r{round_}-{ratio}"),
                    model="clipkit-small:random", steps=steps, batch_size=batch_size,
                    val_split=0.0, mask_ratio=ratio, seed=0,
                )
            )  # fmt: skip
            best[ratio] = max(best.get(ratio, 0.0), result.samples_per_second)
    return [
        {"mask_ratio": ratio, "samples_per_s": rate, "speed_up": rate / best[0.0]}
        for ratio, rate in best.items()
    ]


def write_shapes(root: Path, pairs: int) -> tuple[Path, Path]:
    """Generated shapes: ``pairs`` captioned images, and a colour class tree (25 each)."""
    write_captioned_shapes(root / "pairs", pairs, seed=0)
    write_class_tree(root / "classes", 25, seed=1)
    return root / "pairs", root / "classes"


def emoji_names() -> list[tuple[str, str]]:
    """(emoji, name) of every fully-qualified emoji in Unicode's emoji-test.txt, without
    the skin-tone variants (half the list, each a copy of another but for its colour)."""
    emoji = []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or "; fully-qualified" not in line:
            continue
        codes, comment = line.split(";", 1)[0], line.split("#", 1)[1]
        name = comment.strip().split(" ", 2)[2]  # "😀 E1.0 grinning face"
        if "skin tone" not in name:
            emoji.append(("".join(chr(int(code, 16)) for code in codes.split()), name))
    return emoji


def write_emoji(root: Path, per_class: int = 20) -> tuple[Path, Path]:
    """Noto's colour emoji captioned with their Unicode (CLDR) names, written by people:
    ``pairs/`` for training, and a held-out class tree of the emoji whose name has exactly
    one of EMOJI_CLASSES (``flag/``, ``heart/``, ...), ``per_class`` each, for zero-shot."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the one size its bitmaps come in
    rng = random.Random(0)
    emoji = emoji_names()
    rng.shuffle(emoji)
    held: dict[str, int] = {}
    for number, (text, name) in enumerate(emoji):
        canvas = Image.new("RGB", (160, 160), (255, 255, 255))
        ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
        box = ImageOps.invert(canvas).getbbox() or (0, 0, 160, 160)
        side = max(box[2] - box[0], box[3] - box[1])
        left, top = (box[0] + box[2] - side) // 2, (box[1] + box[3] - side) // 2
        image = canvas.crop((left, top, left + side, top + side)).resize((64, 64), Image.LANCZOS)
        words = set(re.findall(r"[a-z]+", name.lower()))
        labels = [label for label in EMOJI_CLASSES if label in words]
        if len(labels) == 1 and held.get(labels[0], 0) < per_class:
            held[labels[0]] = held.get(labels[0], 0) + 1
            (root / "classes" / labels[0]).mkdir(parents=True, exist_ok=True)
            image.save(root / "classes" / labels[0] / f"emoji{number:05d}.png")
            continue
        (root / "pairs").mkdir(parents=True, exist_ok=True)
        image.save(root / "pairs" / f"emoji{number:05d}.png")
        (root / "pairs" / f"emoji{number:05d}.txt").write_text(name + "\n", encoding="utf-8")
    return root / "pairs", root / "classes"


def quality(sets: dict[str, tuple[Path, Path]], out: Path, epochs: int, seeds: int,
            objectives: list[str], queue: int, first_seed: int = 0) -> list[dict]:  # fmt: skip
    """Validation recall@1/5/10 and zero-shot top-1 after the last epoch, per set, objective
    and seed; ``clipkit-tiny`` from scratch at batch 32 (the small batch the queue is for),
    the queue ``queue`` keys long (it must stay below the training pairs: a longer queue
    holds stale keys of the very images it scores)."""
    rows = []
    for set_name, (pairs, classes) in sets.items():
        for seed in range(first_seed, seeds):  # seed by seed: a stopped run keeps whole seeds
            for name in objectives:
                options = {**OBJECTIVES[name]}
                if "queue" in options:
                    options["queue"] = queue
                label = f"{name} {queue}" if "queue" in options else name
                run = out / f"{set_name}-{name.replace(' ', '')}-{seed}"
                started = time.perf_counter()
                result = train(
                    TrainConfig(
                        data=str(pairs), out=str(run), model="clipkit-tiny:random",
                        epochs=epochs, batch_size=32, lr=2e-3, val_split=0.15,
                        eval_classes=str(classes), seed=seed, **options,
                    )
                )  # fmt: skip
                if result.interrupted:  # Ctrl-C or SIGTERM: the run saved and stopped; so do we
                    raise SystemExit(f"interrupted during {set_name} {name} seed {seed}")
                last = result.evaluations[-1]
                row = {"set": set_name, "objective": label, "seed": seed, "epochs": epochs,
                       "train_pairs": result.train_pairs, "steps": result.steps_done,
                       "zeroshot_top1": last.zeroshot_top1,
                       "seconds": time.perf_counter() - started}  # fmt: skip
                for k in (1, 5, 10):
                    both = (
                        getattr(last, f"image_to_text_r{k}"),
                        getattr(last, f"text_to_image_r{k}"),
                    )
                    row[f"r{k}"] = sum(both) / 2
                print(json.dumps(row), flush=True)
                rows.append(row)
                shutil.rmtree(run, ignore_errors=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Mean and spread (min-max over seeds) of each metric, per set and objective."""
    table = []
    keys = sorted(
        {(r["set"], r["objective"]) for r in rows},
        key=lambda k: (k[0], list(OBJECTIVES).index(re.sub(r" \d+$", "", k[1]))),
    )
    for set_name, name in keys:
        group = [r for r in rows if (r["set"], r["objective"]) == (set_name, name)]
        entry: dict = {"set": set_name, "objective": name, "seeds": len(group)}
        for metric in ("r1", "r5", "r10", "zeroshot_top1", "seconds"):
            values = [r[metric] for r in group]
            entry[metric] = statistics.mean(values)
            entry[f"{metric}_range"] = [min(values), max(values)]
        table.append(entry)
    return table


def markdown(table: list[dict]) -> str:
    """The RESULTS.md table: means over seeds, the min-max range of R@5 and zero-shot."""
    lines = ["| set | objective | R@1 | R@5 (min-max) | R@10 | zero-shot top-1 (min-max) "
             "| s per run |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for e in table:
        r5, zs = e["r5_range"], e["zeroshot_top1_range"]
        lines.append(
            f"| {e['set']} | {e['objective']} | {e['r1']:.3f} | {e['r5']:.3f} "
            f"({r5[0]:.3f}-{r5[1]:.3f}) | {e['r10']:.3f} | {e['zeroshot_top1']:.3f} "
            f"({zs[0]:.2f}-{zs[1]:.2f}) | {e['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["speed", "quality", "table"])
    parser.add_argument("--steps", type=int, default=20, help="speed: steps per run")
    parser.add_argument("--batch-size", type=int, default=64, help="speed: batch size")
    parser.add_argument("--rounds", type=int, default=2, help="speed: runs per ratio")
    parser.add_argument("--epochs", type=int, default=6, help="quality: epochs per run")
    parser.add_argument("--seeds", type=int, default=3, help="quality: seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0, help="quality: resume at seed")
    parser.add_argument("--shapes", type=int, default=1500, help="quality: generated pairs")
    parser.add_argument("--sets", default="shapes,emoji")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--queue", type=int, default=4096, help="quality: the queue's K")
    args = parser.parse_args()
    results_file = Path(__file__).parent / "results" / "objectives.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as tmp:
        root = Path(tmp)
        if args.part == "table":  # the quality table of the last runs, as markdown
            print(markdown(results["quality"]))
            return
        if args.part == "speed":
            data = root / "data"
            write_captioned_shapes(data, args.batch_size * 4, seed=0, size=128)
            speed = masking_speed(data, root, args.steps, args.batch_size, args.rounds)
            results.update(speed_machine=machine(), steps=args.steps,
                           batch_size=args.batch_size, masking_speed=speed)  # fmt: skip
            print(json.dumps(speed, indent=2))
        else:
            makers = {"shapes": lambda: write_shapes(root / "shapes", args.shapes),
                      "emoji": lambda: write_emoji(root / "emoji")}  # fmt: skip
            sets = {name: makers[name]() for name in args.sets.split(",")}
            objectives = args.objectives.split(",")
            rows = quality(sets, root / "runs", args.epochs, args.seeds, objectives, args.queue,
                           args.first_seed)  # fmt: skip
            # a set measured again replaces its earlier rows; the other sets' rows stay
            kept = [r for r in results.get("quality_runs", []) if r["set"] not in sets]
            table = summary(kept + rows)
            results.update(quality_machine=machine(), quality_runs=kept + rows,
                           quality=table)  # fmt: skip
            print(markdown(table))
    write_results(results_file, results)


if __name__ == "__main__":
    main()
