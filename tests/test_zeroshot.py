"""``clipkit zeroshot``: equality with open_clip's zero-shot classifier, prompt ensembling as
defined, textbook metrics, calibrated open-set rejection on a planted case, the three input
kinds, skipped images, HTML escaping, and every bad-input error the issue names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipkit import store
from clipkit.errors import InputError
from clipkit.inputs.classes import class_tree_of_uris
from clipkit.inputs.synthetic import write_class_tree
from clipkit.score.metrics import calibrate_threshold, classification_metrics
from clipkit.score.zeroshot import class_embeddings, classify
from clipkit.zeroshot.classes import (
    LabelSpec,
    check_labels,
    parse_labels,
    prompts_for,
    read_labels_file,
    read_templates,
)
from clipkit.zeroshot.run import (
    UNKNOWN,
    ZeroShotConfig,
    write_predictions,
    zeroshot,
)
from tests.helpers import TINY, make_images


@pytest.fixture(scope="module")
def trained(finished_run):
    """The best checkpoint of the session's trained tiny model (learned colours and shapes)."""
    _, result = finished_run
    return str(Path(result.run_dir) / "best.safetensors")


@pytest.fixture(scope="module")
def colour_tree(tmp_path_factory):
    """A fresh 4-colour class tree, unseen in training (12 images per class)."""
    root = tmp_path_factory.mktemp("colours")
    write_class_tree(root, 12, seed=7)
    return root


def _config(images, model, **options):
    return ZeroShotConfig(images=Path(images), model=model, workers=0, device="cpu", **options)


# --- labels and templates -------------------------------------------------------------------


def test_inline_labels_are_split_on_commas_and_trimmed():
    assert [s.name for s in parse_labels(" cat, dog ,,  sports  car ")] == [
        "cat",
        "dog",
        "sports car",
    ]


def test_labels_file_holds_names_or_per_class_prompts(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# animals\ncat\n\ndog: a photo of a dog | a {} on grass\n", encoding="utf-8")
    labels = read_labels_file(path)
    assert labels == [LabelSpec("cat"), LabelSpec("dog", ("a photo of a dog", "a {} on grass"))]
    prompts = prompts_for(labels, ("a photo of a {}.", "art of a {}."))
    assert prompts == [
        ["a photo of a cat.", "art of a cat."],
        ["a photo of a dog", "a dog on grass"],
    ]


def test_labels_file_line_with_colon_but_no_prompt_is_an_error(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog:\n")
    with pytest.raises(InputError, match="line 2"):
        read_labels_file(path)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "No labels"),
        (["cat"], "Only one label"),
        (["cat", "dog", "Cat"], "Duplicate"),
        (["cat", "dog", "cat"], "Duplicate"),
    ],
)
def test_bad_label_sets_are_refused(names, message):
    with pytest.raises(InputError, match=message):
        check_labels([LabelSpec(n) for n in names], "--labels")


def test_template_sets_and_files(tmp_path):
    assert read_templates("simple") == ("a photo of a {}.",)
    openai = read_templates("openai")
    assert len(openai) == 80 and openai[0] == "a bad photo of a {}."
    assert all("{}" in t for t in openai)
    good = tmp_path / "templates.txt"
    good.write_text("a photo of a {}.\n# comment\n\na drawing of the {}\n")
    assert read_templates(str(good)) == ("a photo of a {}.", "a drawing of the {}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a photo of a {}.\na photo of a thing\n", "line 2"),
        ("\n# only a comment\n", "no templates"),
    ],
)
def test_bad_template_files_are_refused(tmp_path, text, message):
    path = tmp_path / "templates.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_templates(str(path))


def test_unknown_template_set_is_refused():
    with pytest.raises(InputError, match="neither a known set nor a file"):
        read_templates("imagenet-ish")


# --- the math --------------------------------------------------------------------------------


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompt_embeddings(tiny_encoder):
    templates = ("a photo of a {}.", "a drawing of a {}.", "a {} in the snow.")
    got = class_embeddings(
        tiny_encoder.encode_texts, prompts_for(parse_labels("cat,dog"), templates)
    )
    for row, label in enumerate(("cat", "dog")):
        each = [tiny_encoder.encode_texts([t.replace("{}", label)])[0] for t in templates]
        each = [vector / vector.norm() for vector in each]
        mean = sum(each) / len(each)
        np.testing.assert_allclose(got[row], (mean / mean.norm()).numpy(), atol=1e-6, rtol=0)
    single = class_embeddings(tiny_encoder.encode_texts, [["a photo of a cat."]])
    assert not np.allclose(got[0], single[0], atol=1e-4)  # ensembling changes the embedding


def test_classify_by_hand_softmax_and_sigmoid():
    images = np.array([[1.0, 0.0], [0.0, -1.0]], np.float32)
    weights = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # image 0: logits (2, 0); softmax e^2/(e^2+1) = 0.8808; sigmoid of (2-1, 0-1): 0.7311, 0.2689
    soft, order = classify(images, weights, 2.0, 2)
    assert order.tolist() == [[0, 1], [0, 1]]
    assert soft[0].tolist() == pytest.approx([0.880797, 0.119203], abs=1e-6)
    sig, sig_order = classify(images, weights, 2.0, 2, bias=-1.0)
    assert sig_order.tolist() == order.tolist()
    assert sig[0].tolist() == pytest.approx([0.731059, 0.268941], abs=1e-6)
    assert sig[1].tolist() == pytest.approx([0.268941, 0.047426], abs=1e-6)  # σ(-1), σ(-3)
    with np.errstate(over="raise"):  # no overflow at the extremes
        extreme, _ = classify(images, weights, 100.0, 2, bias=-10.0)
    assert extreme[0].tolist() == pytest.approx([1.0, 4.54e-5], abs=1e-6)


def test_metrics_on_a_hand_made_imbalanced_case():
    # 6 A, 3 B, 1 C. Top-1: A->A x4, A->B x2; B->B x2, B->C x1; C->C x1.
    labels = ["A", "B", "C", "D"]  # D: a label no image truly has
    targets = [0] * 6 + [1] * 3 + [2]
    firsts = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    seconds = [1, 1, 1, 1, 0, 2, 0, 0, 1, 0]  # the true class is second for 2 of 3 misses
    ranked = [[f, s, 3] for f, s in zip(firsts, seconds, strict=True)]
    m = classification_metrics(labels, targets, ranked, k=2)
    assert m.top1 == pytest.approx(7 / 10)
    assert m.topk == pytest.approx(9 / 10) and m.k == 2  # B->C (second C, true B) misses
    a, b, c, d = m.classes
    assert (a.support, a.predicted, a.correct) == (6, 4, 4)
    assert a.precision == pytest.approx(1.0) and a.recall == pytest.approx(4 / 6)
    assert (b.predicted, b.correct) == (4, 2)
    assert b.precision == pytest.approx(2 / 4) and b.recall == pytest.approx(2 / 3)
    assert c.precision == pytest.approx(1 / 2) and c.recall == pytest.approx(1.0)
    assert d.support == 0 and d.recall is None and d.precision is None
    # Balanced accuracy averages the recall of the classes present: (4/6 + 2/3 + 1) / 3.
    assert m.mean_per_class_recall == pytest.approx((4 / 6 + 2 / 3 + 1) / 3)
    assert m.confusion[0] == (4, 2, 0, 0) and m.confusion[1] == (0, 2, 1, 0)
    assert m.worst_confusions(1) == [(0, 1, 2)]


def test_calibrated_threshold_rejects_the_requested_share_of_known_images():
    confidences = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    threshold = calibrate_threshold(confidences, 0.2)
    assert threshold == 0.6  # the two lowest (0.5, 0.55) fall below it, nothing else
    assert sum(c < threshold for c in confidences) == 2
    assert calibrate_threshold(confidences, 0.0) == 0.5  # rejects none
    assert sum(c < calibrate_threshold(confidences, 0.25) for c in confidences) <= 2


# --- against open_clip -----------------------------------------------------------------------


def test_equals_open_clip_build_zero_shot_classifier(trained, colour_tree):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from clipkit.models import load_model

    result = zeroshot(_config(colour_tree, trained, templates="openai", k=4, class_tree=True))
    encoder = load_model(trained, device="cpu")
    model = encoder.model
    labels = list(result.labels)
    with torch.no_grad():
        classifier = build_zero_shot_classifier(
            model, encoder.tokenizer, labels, OPENAI_IMAGENET_TEMPLATES, device="cpu"
        )  # (D, C)
        pixels = torch.stack(
            [encoder.preprocess(Image.open(p.uri).convert("RGB")) for p in result.predictions]
        )
        features = model.encode_image(pixels, normalize=True)
        probabilities = (model.logit_scale.exp() * features @ classifier).softmax(dim=-1)
    assert len(result.predictions) == 48
    for prediction, expected in zip(result.predictions, probabilities, strict=True):
        assert prediction.label == labels[int(expected.argmax())]
        for label, probability in prediction.top:
            assert probability == pytest.approx(float(expected[labels.index(label)]), abs=1e-5)


def test_a_siglip_model_gives_each_label_its_own_sigmoid(trained, colour_tree, tmp_path):
    """A model with a logit bias (trained with SigLIP's loss) reports σ(t·cos + b) per label,
    against open_clip's classifier, and says so; the labels' order is the softmax's."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from clipkit.models import load_model
    from clipkit.models.checkpoints import write_checkpoint

    encoder = load_model(trained, device="cpu")
    encoder.add_logit_bias(-4.0)
    siglip = write_checkpoint(
        tmp_path / "siglip.safetensors", encoder.model.state_dict(), encoder.checkpoint_meta()
    )
    options = {"templates": "openai", "k": 4, "class_tree": True}
    result = zeroshot(_config(colour_tree, str(siglip), **options))
    softmax = zeroshot(_config(colour_tree, trained, **options))
    assert result.logit_bias == pytest.approx(-4.0) and softmax.logit_bias is None
    assert "sigmoid" in result.probabilities and "softmax" in softmax.probabilities
    assert result.as_dict()["logit_bias"] == pytest.approx(-4.0)
    labels = list(result.labels)
    model = encoder.model
    with torch.no_grad():
        classifier = build_zero_shot_classifier(
            model, encoder.tokenizer, labels, OPENAI_IMAGENET_TEMPLATES, device="cpu"
        )
        pixels = torch.stack(
            [encoder.preprocess(Image.open(p.uri).convert("RGB")) for p in result.predictions]
        )
        features = model.encode_image(pixels, normalize=True)
        expected = torch.sigmoid(model.logit_scale.exp() * features @ classifier - 4.0)
    for prediction, plain, want in zip(
        result.predictions, softmax.predictions, expected, strict=True
    ):
        assert prediction.label == plain.label == labels[int(want.argmax())]
        assert [label for label, _ in prediction.top] == [label for label, _ in plain.top]
        for label, probability in prediction.top:
            assert probability == pytest.approx(float(want[labels.index(label)]), abs=1e-5)


def test_trained_tiny_model_is_clearly_above_chance_on_a_class_tree(trained, colour_tree):
    result = zeroshot(_config(colour_tree, trained, class_tree=True))
    assert result.input_kind == "class tree" and result.labels == ("blue", "green", "red", "yellow")
    metrics = result.metrics
    assert metrics is not None and metrics.images == 48
    # Chance is 0.25 (the random init labels everything "green"); this run reaches ~0.58.
    assert metrics.top1 >= 0.45 and metrics.mean_per_class_recall >= 0.45
    assert sum(row[i] for i, row in enumerate(metrics.confusion)) == round(metrics.top1 * 48)
    assert all(p.target == Path(p.uri).parent.name for p in result.predictions)


# --- inputs ----------------------------------------------------------------------------------


def test_embeddings_folder_is_classified_without_re_encoding(
    trained, colour_tree, tmp_path, monkeypatch
):
    from clipkit.embed import EmbedConfig, embed
    from clipkit.inputs import pipeline

    embed(
        EmbedConfig(
            sources=(str(colour_tree),),
            out_dir=tmp_path / "emb",
            model=trained,
            workers=0,
            device="cpu",
        )
    )
    direct = zeroshot(_config(colour_tree, trained, class_tree=True))

    def no_encoding(*args, **kwargs):
        raise AssertionError("images were encoded again")

    monkeypatch.setattr(pipeline, "encode_image_files", no_encoding)
    # No --labels: the class folders in the stored uris name the labels, as for the tree itself.
    from_embeddings = zeroshot(_config(tmp_path / "emb", None, class_tree=True))
    assert from_embeddings.input_kind == "embeddings"
    assert from_embeddings.labels == direct.labels == ("blue", "green", "red", "yellow")
    assert from_embeddings.model == trained  # the model recorded in the embeddings
    by_uri = {p.uri: p for p in direct.predictions}
    assert len(from_embeddings.predictions) == 48
    for p in from_embeddings.predictions:
        assert p.label == by_uri[p.uri].label
        assert p.target == by_uri[p.uri].target == Path(p.uri).parent.name
        assert p.confidence == pytest.approx(by_uri[p.uri].confidence, abs=1e-5)
    assert from_embeddings.metrics is not None and direct.metrics is not None
    assert from_embeddings.metrics == direct.metrics  # the same predictions, the same truth


def test_embeddings_of_a_class_tree_score_copies_against_their_own_folder(tmp_path):
    """The same bytes in two class folders are one row plus an alias: each copy is scored
    against the folder it lies in."""
    import shutil

    from clipkit.embed import EmbedConfig, embed

    make_images(tmp_path / "tree" / "cat", 3)
    make_images(tmp_path / "tree" / "dog", 3, start=3)
    shutil.copy(tmp_path / "tree" / "cat" / "img0000.jpg", tmp_path / "tree" / "dog" / "twin.jpg")
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "tree"),),
            out_dir=tmp_path / "emb",
            model=TINY,
            workers=0,
            device="cpu",
        )
    )
    direct = zeroshot(_config(tmp_path / "tree", TINY, class_tree=True))
    stored = zeroshot(_config(tmp_path / "emb", None, class_tree=True))
    assert len(stored.predictions) == 7
    targets = {Path(p.uri).name + "@" + p.target for p in stored.predictions}
    assert {"img0000.jpg@cat", "twin.jpg@dog"} <= targets
    assert stored.metrics is not None and direct.metrics is not None
    assert stored.metrics == direct.metrics  # the same predictions, the same truth
    assert sorted((p.uri, p.target) for p in stored.predictions) == sorted(
        (p.uri, p.target) for p in direct.predictions
    )


def test_copies_in_an_embeddings_folder_get_predictions_too(tmp_path):
    """A copy of an image has no row of its own, only a line in _aliases.parquet; it used to
    get no prediction when the embeddings were classified."""
    import shutil

    from clipkit.embed import EmbedConfig, embed

    images = make_images(tmp_path / "photos", 4)
    shutil.copy(images[0], tmp_path / "photos" / "copy.jpg")
    shutil.copy(images[1], tmp_path / "photos" / "sub_copy.png")
    embed(
        EmbedConfig(
            sources=(str(tmp_path / "photos"),),
            out_dir=tmp_path / "emb",
            model=TINY,
            workers=0,
            device="cpu",
        )
    )
    direct = zeroshot(_config(tmp_path / "photos", TINY, labels="cat,dog,car"))
    stored = zeroshot(_config(tmp_path / "emb", None, labels="cat,dog,car"))
    assert [p.uri for p in stored.predictions] == [p.uri for p in direct.predictions]
    assert len(stored.predictions) == 6
    for mine, theirs in zip(stored.predictions, direct.predictions, strict=True):
        assert mine.label == theirs.label
        assert mine.confidence == pytest.approx(theirs.confidence, abs=1e-5)


def test_class_tree_with_extra_labels_scores_against_the_folders(trained, colour_tree):
    result = zeroshot(
        _config(colour_tree, trained, labels="red,green,blue,yellow,purple", class_tree=True)
    )
    assert result.metrics is not None
    purple = result.metrics.classes[-1]
    assert purple.label == "purple" and purple.support == 0 and purple.recall is None


def test_class_tree_with_labels_not_naming_the_folders_has_no_metrics(trained, colour_tree):
    result = zeroshot(_config(colour_tree, trained, labels="warm,cold", class_tree=True))
    assert result.metrics is None and "not among the labels" in result.notes[0]
    assert {p.label for p in result.predictions} <= {"warm", "cold"}


def test_subfolders_are_no_truth_unless_the_labels_name_them_or_class_tree_says_so(
    trained, colour_tree
):
    """Albums are not classes: labels that are not all subfolder names classify the images
    with no ground truth at all; labels that all name subfolders (any case or spacing) score
    against them, as --class-tree does."""
    untagged = zeroshot(_config(colour_tree, trained, labels="warm,cold"))
    assert untagged.input_kind == "folder" and len(untagged.predictions) == 48
    assert untagged.metrics is None and untagged.notes == ()
    assert all(p.target is None for p in untagged.predictions)
    named = zeroshot(_config(colour_tree, trained, labels="Red, GREEN ,blue,yellow"))
    assert named.input_kind == "class tree" and named.metrics is not None
    assert {p.target for p in named.predictions} == {"red", "green", "blue", "yellow"}
    some = zeroshot(_config(colour_tree, trained, labels="red,green,blue"))  # all name folders
    assert some.input_kind == "class tree" and "yellow are not among the labels" in some.notes[0]


def test_class_tree_that_is_no_tree_is_an_error(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "loose.png")
    with pytest.raises(InputError, match="is not a class tree"):
        zeroshot(_config(tmp_path, TINY, labels="a,b", class_tree=True))


def test_folder_names_become_labels_with_spaces(tmp_path, tiny_encoder):
    for name in ("golden_retriever", "tabby-cat"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32), (200, 100, 0)).save(tmp_path / name / "a.png")
    result = zeroshot(_config(tmp_path, TINY, class_tree=True))
    assert result.labels == ("golden retriever", "tabby cat")


def test_unreadable_images_are_skipped_and_listed(tmp_path, tiny_encoder):
    Image.new("RGB", (40, 40), (10, 200, 10)).save(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    result = zeroshot(_config(tmp_path, TINY, labels="green,red"))
    assert [Path(p.uri).name for p in result.predictions] == ["good.png"]
    assert sorted(Path(uri).name for uri, _, _ in result.failures) == ["empty.jpg", "text.png"]


def test_folder_where_no_image_decodes_is_an_error_naming_them(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError, match=r"No image .* could be read: .*a\.png \(decode"):
        zeroshot(_config(tmp_path, TINY, labels="a,b"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "No labels"),
        ({"labels": "cat"}, "Only one label"),
        ({"labels": "cat,dog,cat"}, "Duplicate"),
        ({"labels": "a,b", "k": 0}, "-k"),
        ({"labels": "a,b", "reject_threshold": 1.5}, r"\(0, 1\]"),
        ({"labels": "a,b", "reject_threshold": 0.5, "calibrate": Path("x")}, "not both"),
        ({"labels": "a,b", "labels_file": Path("x")}, "not both"),
        ({"labels": "cat, Unknown", "reject_threshold": 0.5}, "open-set label"),
    ],
)
def test_bad_options_are_refused_before_loading_a_model(tmp_path, options, message):
    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")
    with pytest.raises(InputError, match=message):
        zeroshot(_config(tmp_path, "no-such-model-would-fail-later", **options))


def test_template_without_placeholder_is_refused(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")
    (tmp_path / "t.txt").write_text("a photo of a thing\n")
    with pytest.raises(InputError, match=r"has no \{\}"):
        zeroshot(_config(tmp_path, TINY, labels="a,b", templates=str(tmp_path / "t.txt")))


@pytest.mark.parametrize("layout", ["empty", "only-text", "missing"])
def test_empty_or_missing_folder_is_an_error(tmp_path, layout):
    folder = tmp_path / "images"
    if layout != "missing":
        folder.mkdir()
    if layout == "only-text":
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no images|does not exist"):
        zeroshot(_config(folder, TINY, labels="a,b"))


# --- open set --------------------------------------------------------------------------------


def _write_embeddings(folder: Path, encoder, vectors: torch.Tensor, names: list[str]) -> None:
    stamp = store.ModelStamp(TINY, encoder.fingerprint, encoder.embed_dim)
    rows = {"id": names, "uri": names, "kind": ["image"] * len(names), "text": [None] * len(names)}
    folder.mkdir(parents=True)
    store.write_shard(store.shard_path(folder, 0), rows, vectors.numpy(), stamp)


def test_open_set_rejection_on_a_planted_case(tmp_path, tiny_encoder):
    """Known images sit on a class embedding; planted unknowns halfway between two classes.

    With two labels, an image on class a's embedding has top probability > 1/2 (it is more
    similar to a than to b), and a halfway image has exactly 1/2: a threshold calibrated with
    no false rejects on the known images separates them.
    """
    labels = ["cat", "dog"]
    prompts = prompts_for(parse_labels("cat,dog"), ("a photo of a {}.",))
    weights = torch.from_numpy(class_embeddings(tiny_encoder.encode_texts, prompts))
    generator = torch.Generator().manual_seed(0)

    def near(row: int, count: int) -> torch.Tensor:
        noise = 1e-3 * torch.randn(count, weights.shape[1], generator=generator)
        return F.normalize(weights[row] + noise, dim=-1)

    known = torch.cat([near(0, 5), near(1, 5)])
    unknown = F.normalize(weights[0] + weights[1], dim=-1).repeat(3, 1)
    _write_embeddings(tmp_path / "known", tiny_encoder, known, [f"known{i}" for i in range(10)])
    test = torch.cat([near(0, 4), near(1, 4), unknown])
    names = [f"cat{i}" for i in range(4)] + [f"dog{i}" for i in range(4)] + ["x0", "x1", "x2"]
    _write_embeddings(tmp_path / "test", tiny_encoder, test, names)

    result = zeroshot(
        _config(
            tmp_path / "test",
            None,
            labels="cat,dog",
            calibrate=tmp_path / "known",
            false_reject=0.0,
        )
    )
    got = {p.uri: p.label for p in result.predictions}
    assert got == {
        **{f"cat{i}": "cat" for i in range(4)},
        **{f"dog{i}": "dog" for i in range(4)},
        **{f"x{i}": UNKNOWN for i in range(3)},
    }
    rejection = result.rejection
    assert rejection.method == "calibrated" and rejection.rejected == 3
    assert rejection.calibration_images == 10 and rejection.calibration_false_reject == 0.0
    assert 0.5 < rejection.threshold < 1.0
    assert dict(result.distribution)[UNKNOWN] == 3 and labels == list(result.labels)

    given = zeroshot(_config(tmp_path / "test", None, labels="cat,dog", reject_threshold=0.5001))
    assert [p.label for p in given.predictions][-3:] == [UNKNOWN] * 3
    assert given.rejection.method == "given" and given.rejection.rejected == 3


# --- outputs ---------------------------------------------------------------------------------


def test_predictions_files_in_every_format(trained, colour_tree, tmp_path):
    import pyarrow.parquet as pq

    result = zeroshot(_config(colour_tree, trained, k=2, class_tree=True))
    for suffix in (".csv", ".json", ".jsonl", ".parquet"):
        write_predictions(result, tmp_path / f"p{suffix}")
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert len(table) == 48 and set(table[0]) == {
        "uri",
        "id",
        "label",
        "confidence",
        "target",
        "path",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
    }
    whole = json.loads((tmp_path / "p.json").read_text())
    assert whole["metrics"]["top1"] == result.metrics.top1 and len(whole["predictions"]) == 48
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["uri"] == result.predictions[0].uri
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert header.startswith("uri,id,label,confidence,target,path,label_1")
    with pytest.raises(InputError, match="suffix"):
        write_predictions(result, tmp_path / "p.xlsx")


def test_html_report_escapes_labels_and_paths(tmp_path, tiny_encoder):
    from clipkit.report import write_zeroshot_report

    for name in ('<b>bold</b> & "co"', "<script>alert(1)</script>"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 100, 50, 50)).save(
                tmp_path / "tree" / name / f"{i}.png"
            )
    result = zeroshot(_config(tmp_path / "tree", TINY, class_tree=True))
    written = write_zeroshot_report(result, tmp_path / "report.html")
    page = written[0].read_text()
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &quot;co&quot;" in page
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count("data:image/png;base64,") == 1  # the heatmap, inline
    assert "http://" not in page and "https://" not in page  # self-contained
    assert np.isclose(sum(c for _, c in result.distribution), 4)


@pytest.mark.parametrize(
    ("uris", "root", "labels", "targets"),
    [
        (["d/cat/a.jpg", "d/dog/b.jpg", "d/cat/x/c.jpg"], "d", ("cat", "dog"), (0, 1, 0)),
        (["cat/a.jpg", "golden_retriever/b.png"], ".", ("cat", "golden retriever"), (0, 1)),
        (["/p/q/b/1.jpg", "/p/q/a/2.jpg"], "/p/q", ("a", "b"), (1, 0)),
        (["s/cat/0.tar#k/1.jpg", "s/dog/0.tar#k2.jpg"], "s", ("cat", "dog"), (0, 1)),
    ],
)
def test_class_tree_of_uris_labels_each_image_by_its_top_folder(uris, root, labels, targets):
    tree = class_tree_of_uris(uris)
    assert tree is not None
    assert (tree.root, tree.labels, tree.targets) == (root, labels, targets)


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["d/cat/a.jpg", "d/b.jpg"],  # an image beside the class folders
        ["d/cat/a.jpg", "d/cat/b.jpg"],  # one folder
        ["/abs/cat/a.jpg", "rel/dog/b.jpg"],  # no common folder
        ["s/00000.tar#k1.jpg", "s/00001.tar#k2.jpg"],  # WebDataset shards side by side
        ["s/00000.tar#cat/k1.jpg", "s/00001.tar#dog/k2.jpg"],
        ["a.jpg", "b.jpg"],
    ],
)
def test_uris_that_are_not_a_class_tree(uris):
    assert class_tree_of_uris(uris) is None


def test_a_plain_folder_s_labels_are_checked_before_it_is_walked(tmp_path, monkeypatch):
    from clipkit.zeroshot import run as module

    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")

    def no_walk(*args, **kwargs):
        raise AssertionError("walked the folder before checking the labels")

    monkeypatch.setattr(module, "discover", no_walk)
    with pytest.raises(InputError, match="No labels"):
        zeroshot(_config(tmp_path, TINY))
