"""Fine-tune a CLIP model on a CSV of image paths and captions, then load the result.

    python examples/finetune_csv.py pairs.csv runs/mine [--model clipkit-tiny:random]

The CSV needs an image-path column (`filepath`, `image`, `path`, ...; relative to the CSV) and
a caption column (`caption`, `text`, ...). Pretrained specs such as
ViT-B-32:laion2b_s34b_b79k need the network once; built-in architectures train from scratch.
"""

from __future__ import annotations

import argparse

from clipkit.models import load_model
from clipkit.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("run_dir")
    parser.add_argument("--model", default="clipkit-tiny:random")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    result = train(
        TrainConfig(
            data=args.csv,
            out=args.run_dir,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            device="cpu",
            resume=False,
        )
    )
    print(
        f"trained on {result.train_pairs} pairs ({len(result.skipped)} skipped), "
        f"{result.steps_done} steps, last loss {result.last_loss:.3f}"
    )
    for epoch, evaluation in enumerate(result.evaluations, 1):
        print(f"epoch {epoch}: validation image->text recall@5 {evaluation.image_to_text_r5:.0%}")

    # The run folder is a model spec for every command and for load_model.
    encoder = load_model(args.run_dir, device="cpu")
    vectors = encoder.encode_texts(["a red circle", "a blue square"])
    print(f"best checkpoint {result.best_checkpoint}: text embeddings {tuple(vectors.shape)}")


if __name__ == "__main__":
    main()
