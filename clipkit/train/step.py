"""One optimisation step: param groups, the learning-rate schedule, and the loss + backward.

The model is called through its ``forward(images, tokens)`` (so a DistributedDataParallel
wrapper sees every call) and returns unit-norm features, ``exp(logit_scale)`` and, for a
model with SigLIP's bias, ``logit_bias``. Under torchrun, features are all-gathered with
gradients (as open_clip's ``gather_with_grad``), so the loss sees the global batch on every
rank: InfoNCE's softmax and SigLIP's sigmoid alike score every rank's texts as negatives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from clipkit.infra.distributed import World
from clipkit.score import directional_losses
from clipkit.train.objective import Features, LossParts, Objective, Targets

# Substrings of parameter names that AdamW must not decay (besides every 1-D tensor):
# biases, norm layers, the temperature and the embedding tables.
NO_DECAY_NAMES = ("bias", "norm", "ln_", ".ln", "bn", "logit_scale", "logit_bias", "embedding")


@dataclass(frozen=True)
class StepLosses:
    """Loss values of one step (on the global batch)."""

    loss: float  # what the step minimised
    temperature: float
    image_text: float  # the image-text part (InfoNCE, with the queue if any, or SigLIP's)
    image_to_text: float | None = None  # InfoNCE's two directions in the batch (loss "clip")
    text_to_image: float | None = None
    bias: float | None = None  # SigLIP's b (loss "siglip")
    queue_fill: float | None = None  # the share of the queue that holds keys (--queue)
    ssl: float | None = None  # the image self-supervision term, before its weight

    def as_record(self) -> dict[str, float]:
        """The ``metrics.jsonl`` fields: the image-text loss under its objective's name, its
        parts, and the other terms."""
        record: dict[str, float] = {}
        if self.bias is not None:
            record.update(loss_siglip=self.image_text, bias=self.bias)
        else:
            assert self.image_to_text is not None and self.text_to_image is not None
            record.update(loss_image_to_text=self.image_to_text,
                          loss_text_to_image=self.text_to_image)  # fmt: skip
        if self.queue_fill is not None:
            record.update(loss_queue=self.image_text, queue_fill=self.queue_fill)
        if self.ssl is not None:
            record["loss_ssl"] = self.ssl
        return record | {"temperature": self.temperature}


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Whether AdamW weight decay applies to this parameter."""
    return parameter.ndim >= 2 and not any(part in name for part in NO_DECAY_NAMES)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices, and the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]


def learning_rate(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (open_clip's)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base


def gather_with_grad(world: World, features: torch.Tensor) -> torch.Tensor:
    """(B, D) per rank -> (W·B, D) in rank order; gradients flow back to each rank's rows."""
    if not world.distributed:
        return features
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(features), dim=0)


def gather_detached(world: World, features: torch.Tensor) -> torch.Tensor:
    if not world.distributed:
        return features
    parts = [torch.empty_like(features) for _ in range(world.size)]
    dist.all_gather(parts, features.contiguous())
    return torch.cat(parts, dim=0)


def momentum_targets(
    objective: Objective,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    views: torch.Tensor | None = None,
    *,
    world: World,
    autocast: contextlib.AbstractContextManager,
    micro_batch: int | None = None,
) -> Targets:
    """The momentum networks' outputs for the local batch (in micro-batches under GradCache),
    gathered over ranks: the queue's keys and BYOL's targets; empty when neither is in use."""
    if not objective.uses_momentum:
        return Targets()
    parts = []
    with torch.no_grad(), autocast:
        for chunk in _chunks(len(pixels), micro_batch or len(pixels)):
            parts.append(objective.targets(pixels[chunk], _rows(views, chunk), tokens[chunk]))
    keys = None
    if parts[0].keys is not None:
        image = torch.cat([part.keys[0] for part in parts if part.keys is not None])
        text = torch.cat([part.keys[1] for part in parts if part.keys is not None])
        keys = (gather_detached(world, image), gather_detached(world, text))
    view_targets = None
    if parts[0].views is not None:
        local = torch.cat([part.views for part in parts if part.views is not None], dim=1)
        view_targets = torch.stack([gather_detached(world, view) for view in local.float()])
    return Targets(keys, view_targets)


def full_batch_step(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    objective: Objective,
    world: World,
    autocast: contextlib.AbstractContextManager,
    scaler: torch.amp.GradScaler | None = None,
    views: torch.Tensor | None = None,
    targets: Targets | None = None,
) -> StepLosses:
    """Forward the whole local batch with autograd, loss on the global batch, backward.

    pixels (B, 3, H, W) and tokens (B, L) are this rank's pairs; views (B, 2, 3, H, W) their
    images' two augmented views (``--image-ssl``); targets the momentum networks' outputs.
    """
    with autocast:
        local = _forward(model, pixels, tokens, views)
    features = _gathered(world, local, gather_with_grad)
    parts = objective.loss(features, targets or Targets())
    _backward(parts.loss, scaler)
    return _losses(objective, parts, features)


def grad_cache_step(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    objective: Objective,
    world: World,
    micro_batch: int,
    autocast: contextlib.AbstractContextManager,
    scaler: torch.amp.GradScaler | None = None,
    views: torch.Tensor | None = None,
    targets: Targets | None = None,
) -> StepLosses:
    """GradCache (Gao et al. 2021): the full-batch gradient with one micro-batch's activations.

    1. Embed every micro-batch without a graph (saving the RNG state before each).
    2. Compute the loss on the cached (global) features and its gradient for each feature;
       the SSL heads, which run on the features, get their gradients here.
    3. Re-run each micro-batch with a graph (same RNG state, so dropout matches) and
       back-propagate its cached feature gradients; parameter gradients accumulate.
    Arguments as :func:`full_batch_step`.
    """
    chunks = _chunks(len(pixels), micro_batch)
    rng_states, cached = [], []
    with torch.no_grad(), autocast:
        for chunk in chunks:
            rng_states.append(_rng_state())
            cached.append(_forward(model, pixels[chunk], tokens[chunk], _rows(views, chunk)))
    end_state = _rng_state()
    local = Features(
        image=torch.cat([part.image.float() for part in cached]),
        text=torch.cat([part.text.float() for part in cached]),
        scale=cached[-1].scale.detach().float(),
        bias=None if cached[-1].bias is None else cached[-1].bias.detach().float(),
        views=None
        if views is None
        else torch.cat([p.views.float() for p in cached if p.views is not None], dim=1),
    )
    leaves = _gathered(world, local, gather_detached)
    for leaf in (leaves.image, leaves.text, leaves.scale, leaves.bias, leaves.views):
        if leaf is not None:
            leaf.requires_grad_()
    parts = objective.loss(leaves, targets or Targets())
    _backward(parts.loss, scaler)  # the leaves' gradients (scaled, under fp16), the heads'
    # DistributedDataParallel averages parameter gradients over ranks, while each rank's
    # features only reach its own parameters: scale them by W so the average is the sum.
    # The temperature's gradient is already the full one on every rank.
    mine = slice(world.rank * len(pixels), (world.rank + 1) * len(pixels))
    image_grad = _grad(leaves.image)[mine] * world.size
    text_grad = _grad(leaves.text)[mine] * world.size
    views_grad = None if leaves.views is None else _grad(leaves.views)[:, mine] * world.size
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        # no_sync: a DistributedDataParallel's, which model is whenever the world is distributed
        sync = contextlib.nullcontext() if last or not world.distributed else model.no_sync()  # type: ignore[operator]
        _set_rng_state(rng_states[number])
        with sync:
            with autocast:
                part = _forward(model, pixels[chunk], tokens[chunk], _rows(views, chunk))
            surrogate = (part.image.float() * image_grad[chunk]).sum() + (
                part.text.float() * text_grad[chunk]
            ).sum()
            if views_grad is not None and part.views is not None:
                surrogate = surrogate + (part.views.float() * views_grad[:, chunk]).sum()
            if last:  # the temperature's (and the bias's) gradient, once
                surrogate = surrogate + part.scale.float() * _grad(leaves.scale)
                if (
                    part.bias is not None
                    and leaves.bias is not None
                    and leaves.bias.grad is not None
                ):
                    surrogate = surrogate + part.bias.float() * _grad(leaves.bias)
            _backward(surrogate, None)  # the cached gradients are already scaled
    _set_rng_state(end_state)
    return _losses(objective, parts, leaves)


def _forward(
    model: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, views: torch.Tensor | None
) -> Features:
    """This rank's features. The views go through the image tower in the same forward as the
    batch (so a DistributedDataParallel wrapper sees one call), after the B images."""
    images = pixels if views is None else torch.cat([pixels, views[:, 0], views[:, 1]])
    outputs = model(images, tokens)
    image, text, scale = outputs[:3]
    bias = outputs[3] if len(outputs) > 3 else None
    if views is None:
        return Features(image, text, scale, bias)
    size = len(pixels)
    return Features(image[:size], text, scale, bias, views=image[size:].unflatten(0, (2, size)))


def _gathered(world: World, local: Features, gather: Callable) -> Features:
    """The global batch's features, rows in rank order (the views' rows too)."""
    views = local.views
    if views is not None:
        views = torch.stack([gather(world, view) for view in views.unbind()])
    return Features(
        gather(world, local.image), gather(world, local.text), local.scale, local.bias, views
    )


def _rows(views: torch.Tensor | None, chunk: slice) -> torch.Tensor | None:
    return None if views is None else views[chunk]


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    assert leaf.grad is not None, "a leaf that required grad, after backward"
    return leaf.grad


def _backward(value: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if not value.requires_grad:
        return  # both towers and the temperature are frozen: nothing to do
    (scaler.scale(value) if scaler is not None else value).backward()


def _losses(objective: Objective, parts: LossParts, features: Features) -> StepLosses:
    scale = features.scale.detach().float()
    common: dict[str, Any] = {
        "loss": float(parts.loss.detach()),
        "temperature": 1.0 / float(scale.clamp(max=100.0)),
        "image_text": float(parts.image_text.detach()),
        "queue_fill": objective.queue.fill if objective.queue is not None else None,
        "ssl": None if parts.ssl is None else float(parts.ssl.detach()),
    }
    if objective.name == "siglip":
        assert features.bias is not None
        return StepLosses(**common, bias=float(features.bias.detach()))
    with torch.no_grad():
        image_to_text, text_to_image = directional_losses(
            features.image.detach(), features.text.detach(), scale.log()
        )
    return StepLosses(
        **common, image_to_text=float(image_to_text), text_to_image=float(text_to_image)
    )


def _chunks(size: int, micro_batch: int) -> list[slice]:
    return [slice(start, min(start + micro_batch, size)) for start in range(0, size, micro_batch)]


def _rng_state() -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, Sequence[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])
