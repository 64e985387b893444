"""``clipkit train --queue/--momentum`` and ``--image-ssl/--ssl-weight`` (issue #27): the step's
loss against its definition with a hand-filled queue, the momentum model's EMA and the keys it
queues after the step, BYOL's target (no gradient, moves by EMA), heads kept out of the exported
model, an exact resume of queues, momentum weights and heads, and the options' bad values.
GradCache and torchrun with these terms: tests/test_train_ddp.py."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipkit.errors import UsageError
from clipkit.infra.distributed import World
from clipkit.models import load_model
from clipkit.train import train
from clipkit.train.objective import MomentumQueue, Objective
from clipkit.train.ssl import ImageSSL
from clipkit.train.step import full_batch_step, momentum_targets
from tests.helpers import TINY, interrupt_and_resume, logged_steps, train_config

NOTHING = contextlib.nullcontext()


@pytest.fixture
def tiny():
    encoder = load_model(TINY, device="cpu")
    with torch.no_grad():
        encoder.model.logit_scale.fill_(math.log(1 / 0.1))
    encoder.model.train()
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = encoder.tokenize(["a red square", "a blue circle", "a green star", "a red star"])
    return encoder, pixels, tokens


def test_the_queued_keys_join_each_direction_s_softmax_denominator(tiny):
    encoder, pixels, tokens = tiny
    model, dim = encoder.model, encoder.embed_dim
    queue = MomentumQueue(model, 8, dim, momentum=0.9)
    keys = F.normalize(torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    queue.image.enqueue(keys[0])
    queue.text.enqueue(keys[1])
    losses = full_batch_step(model, pixels, tokens, objective=Objective("clip", 0.3, queue=queue),
                             world=World(), autocast=NOTHING)  # fmt: skip
    with torch.no_grad():  # from the definition, one pair at a time
        a = F.normalize(model.encode_image(pixels), dim=-1)
        b = F.normalize(model.encode_text(tokens), dim=-1)
        t = 10.0
        expected = 0.0
        for i in range(4):
            to_texts = torch.cat([a[i] @ b.T, a[i] @ keys[1].T]) * t
            to_images = torch.cat([b[i] @ a.T, b[i] @ keys[0].T]) * t
            expected += 0.3 * (torch.logsumexp(to_texts, 0) - t * a[i] @ b[i]) / 4
            expected += 0.7 * (torch.logsumexp(to_images, 0) - t * a[i] @ b[i]) / 4
    assert losses.loss == pytest.approx(float(expected), rel=1e-5)
    assert losses.queue_fill == 3 / 8
    record = losses.as_record()
    assert record["loss_queue"] == losses.loss and record["queue_fill"] == 3 / 8
    assert losses.image_to_text is not None  # the in-batch directions are still logged


def test_after_the_step_the_momentum_model_follows_and_the_step_s_keys_are_queued(tiny):
    encoder, pixels, tokens = tiny
    model = encoder.model
    objective = Objective("clip", queue=MomentumQueue(model, 8, encoder.embed_dim, 0.9))
    before = copy.deepcopy(objective.queue.encoder.module)
    targets = momentum_targets(objective, pixels, tokens, world=World(), autocast=NOTHING)
    full_batch_step(model, pixels, tokens, objective=objective, world=World(), autocast=NOTHING,
                    targets=targets)  # fmt: skip
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    objective.after_update(model, targets)
    with torch.no_grad():
        image_keys, text_keys = before.eval()(pixels, tokens)[:2]  # the momentum model's
    torch.testing.assert_close(objective.queue.image.current(), image_keys)
    torch.testing.assert_close(objective.queue.text.current(), text_keys)
    name = "visual.conv1.weight"
    moved = objective.queue.encoder.module.get_parameter(name)
    expected = 0.9 * before.get_parameter(name) + 0.1 * model.get_parameter(name)
    torch.testing.assert_close(moved, expected)
    assert not torch.equal(moved, before.get_parameter(name))


def test_byol_s_target_gets_no_gradient_and_moves_by_ema(tiny):
    encoder, pixels, tokens = tiny
    model = encoder.model
    torch.manual_seed(0)
    ssl = ImageSSL("byol", encoder.embed_dim).train()
    ssl.attach_target(model.visual)
    objective = Objective("clip", ssl=ssl, ssl_weight=0.5, momentum=0.8)
    views = torch.randn(4, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = momentum_targets(objective, pixels, tokens, views, world=World(), autocast=NOTHING)
    assert targets.views is not None and targets.views.shape == (2, 4, 256)
    losses = full_batch_step(model, pixels, tokens, objective=objective, world=World(),
                             autocast=NOTHING, views=views, targets=targets)  # fmt: skip
    assert losses.ssl is not None and losses.loss == pytest.approx(
        losses.image_text + 0.5 * losses.ssl, rel=1e-6
    )
    assert ssl.target_tower is not None and ssl.target_projector is not None
    target_params = list(ssl.target_tower.module.parameters())
    assert all(p.grad is None for p in target_params)
    assert all(p.grad is not None for p in ssl.parameters())  # the heads learn
    old = target_params[0].clone()
    parameters = list(model.parameters()) + list(ssl.parameters())
    torch.optim.SGD(parameters, lr=0.5).step()
    objective.after_update(model, targets)
    online = next(model.visual.parameters())
    torch.testing.assert_close(target_params[0], 0.8 * old + 0.2 * online.detach())


@pytest.fixture(scope="module")
def mixed_run(shapes, tmp_path_factory):
    """Every new term at once: a queue, BYOL's momentum target, under GradCache."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    options = {"steps": 4, "val_split": 0.1, "seed": 3, "queue": 32, "momentum": 0.9,
               "image_ssl": "byol", "ssl_weight": 0.5, "grad_cache": True,
               "micro_batch": 6}  # fmt: skip
    return out, options, train(train_config(shapes, out, **options))


def test_new_terms_are_logged_and_the_exported_model_is_a_plain_clip(mixed_run):
    out, _, result = mixed_run
    assert result.settings["momentum"] == 0.9 and result.settings["ssl_weight"] == 0.5
    steps = logged_steps(out)
    assert [r["queue_fill"] for r in steps[:3]] == [0.0, 0.5, 1.0]  # 16 keys a step, K = 32
    for record in steps:
        assert record["loss"] == pytest.approx(record["loss_queue"] + 0.5 * record["loss_ssl"])
    exported = load_file(out / "last.safetensors")
    assert exported.keys() == load_model(TINY, device="cpu").model.state_dict().keys()
    state = torch.load(out / "state.pt", weights_only=True)
    assert {"queue", "ssl"} <= state["objective"].keys()
    assert any(name.startswith("projector.") for name in state["objective"]["ssl"]["heads"])
    load_model(str(out), device="cpu")  # every other command sees a plain CLIP model


def test_queues_momentum_weights_and_heads_resume_bit_for_bit(mixed_run, shapes, tmp_path):
    whole, options, _ = mixed_run

    interrupt_and_resume(shapes, tmp_path / "split", stop_at=2, **options)
    assert [r["loss"] for r in logged_steps(tmp_path / "split")] == [
        r["loss"] for r in logged_steps(whole)
    ]
    expected = torch.load(whole / "state.pt", weights_only=True)["objective"]
    actual = torch.load(tmp_path / "split" / "state.pt", weights_only=True)["objective"]
    _assert_equal_trees(actual, expected)


def _assert_equal_trees(actual, expected, where="objective"):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_equal_trees(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize(
    ("options", "message"),
    [({"queue": 20}, "--queue 20 is not a multiple of the batch size 16"),
     ({"queue": -16}, "--queue must be >= 0"),
     ({"queue": 32, "momentum": 1.5}, r"--momentum must be in \[0, 1\]"),
     ({"queue": 32, "momentum": -0.1}, r"--momentum must be in \[0, 1\]"),
     ({"queue": 32, "momentum": math.nan}, r"--momentum must be in \[0, 1\]"),
     ({"momentum": 0.9}, "neither was given"),
     ({"image_ssl": "simclr", "momentum": 0.9}, "neither was given"),
     ({"queue": 32, "loss": "siglip"}, "SigLIP's loss has none"),
     ({"image_ssl": "mocov3"}, "--image-ssl must be one of simclr, simsiam, byol, swav"),
     ({"ssl_weight": 0.5}, "no --image-ssl was given"),
     ({"image_ssl": "swav", "ssl_weight": -1.0}, "--ssl-weight must be a number >= 0"),
     ({"image_ssl": "simsiam", "lock_image": True}, "which --lock-image freezes")],
)  # fmt: skip
def test_bad_queue_and_ssl_options_are_refused_before_training(shapes, tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        train(train_config(shapes, tmp_path / "run", epochs=1, **options))
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_each_image_comes_with_two_different_simclr_views(tiny):
    from PIL import Image

    from clipkit.models.pixels import WithViews, simclr_views, split_transform

    encoder = tiny[0]
    augment = split_transform(encoder.train_transform())
    transform = WithViews(augment.pixels, simclr_views(encoder.image_size))
    image = Image.linear_gradient("L").convert("RGB").resize((96, 80))
    torch.manual_seed(5)
    stacked = transform(image)
    torch.manual_seed(5)
    alone = augment.pixels(image)  # the image's own pixels come first, drawn first
    assert stacked.shape == (3, 3, 64, 64) and stacked.dtype == torch.uint8
    assert torch.equal(stacked[0], alone)
    assert not torch.equal(stacked[1], stacked[2])


def test_the_training_plot_draws_each_logged_part(mixed_run):
    from clipkit.plots import training_curves

    out, _, _ = mixed_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    panels = training_curves(records)
    assert {"train", "validation", "InfoNCE with the queue", "image SSL (unweighted)"} == set(
        panels["loss"]
    )
    steps, fills = panels["state"]["queue fill"]
    assert steps == [1, 2, 3, 4] and fills[:3] == [0.0, 0.5, 1.0]
    assert "temperature t" in panels["state"] and not panels["bias"]
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    siglip = [{"kind": "step", "step": 1, "loss": 9.0, "loss_siglip": 9.0, "bias": -10.0,
               "mask_ratio": 0.5, "temperature": 0.1}]  # fmt: skip
    panels = training_curves(siglip)
    assert panels["bias"] == {"SigLIP bias b": ([1], [-10.0])}
    assert panels["state"]["mask ratio"] == ([1], [0.5]) and "SigLIP" in panels["loss"]


def test_fine_tuning_with_ssl_trains_the_new_heads_at_the_from_scratch_rate(shapes, tmp_path):
    out = tmp_path / "run"
    train(train_config(shapes, out, image_ssl="simsiam", lr=1e-5, steps=2, warmup=1, val_split=0.0))
    groups = torch.load(out / "state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert len(groups) == 4  # the model's two (decayed, not), then the heads' two
    model_lr = groups[0]["lr"]
    assert "lr_scale" not in groups[0] and model_lr > 0
    for heads in groups[2:]:
        assert heads["lr_scale"] == pytest.approx(5e-4 / 1e-5)
        assert heads["lr"] == pytest.approx(50 * model_lr)
