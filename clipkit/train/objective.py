"""What a training step minimises, and the state beside the model that it needs.

``loss = L_image_text + W · L_ssl`` where ``L_image_text`` is CLIP's InfoNCE (both ways,
weighted by λ), SigLIP's pairwise sigmoid loss, or InfoNCE whose denominators add a queue of
momentum keys (MoCo/ALBEF, ``--queue``); ``L_ssl`` is an image self-supervision term on two
augmented views (``--image-ssl``). The step (``step``) computes the features; this module turns
the global batch's features into the loss, and after the optimiser's step moves the momentum
encoders and enqueues the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipkit.score import contrastive_loss, sigmoid_loss
from clipkit.score.queue_loss import queue_contrastive_loss
from clipkit.train.momentum import KeyQueue, MomentumCopy
from clipkit.train.ssl import ImageSSL


@dataclass
class Features:
    """One batch's model outputs; row i of each is pair i.

    image, text: (S, D) unit-norm embeddings. scale: ``exp(logit_scale)``, a scalar. bias:
    SigLIP's logit bias or None. views: (2, S, D) unit-norm embeddings of the two augmented
    views of each image, or None without ``--image-ssl``.
    """

    image: torch.Tensor
    text: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None = None
    views: torch.Tensor | None = None


@dataclass
class Targets:
    """What the momentum networks made of a batch (no gradient), gathered over ranks.

    keys: (image, text), each (S, D), enqueued after the step (``--queue``); views: (2, S, P)
    BYOL's targets of the two views.
    """

    keys: tuple[torch.Tensor, torch.Tensor] | None = None
    views: torch.Tensor | None = None


@dataclass(frozen=True)
class LossParts:
    """The loss and its parts, as the step reports them."""

    loss: torch.Tensor  # what is minimised
    image_text: torch.Tensor  # L_image_text (with the queue, if any)
    ssl: torch.Tensor | None = None  # L_ssl, before its weight


class MomentumQueue:
    """MoCo/ALBEF: a momentum copy of the whole model whose keys fill two FIFO queues."""

    def __init__(self, model: torch.nn.Module, size: int, dim: int, momentum: float) -> None:
        self.encoder = MomentumCopy(model)
        device = next(model.parameters()).device
        self.image, self.text = KeyQueue(size, dim, device), KeyQueue(size, dim, device)
        self.momentum = momentum

    @torch.no_grad()
    def keys(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) image and text keys of a local batch, unit-norm, from the momentum model."""
        image, text = self.encoder.module(pixels, tokens)[:2]
        return image.float(), text.float()

    @property
    def fill(self) -> float:
        return self.image.filled / self.image.size

    def after_update(self, model: torch.nn.Module, keys: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.encoder.follow(model, self.momentum)
        self.image.enqueue(keys[0])
        self.text.enqueue(keys[1])

    def resume_state(self) -> dict[str, Any]:
        return {"encoder": self.encoder.state_dict(), "image": self.image.state_dict(),
                "text": self.text.state_dict()}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.image.load_state_dict(state["image"])
        self.text.load_state_dict(state["text"])


class Objective:
    """The loss of one step's global features, with its queue, heads and momentum networks.

    Args:
        loss: ``"clip"`` (InfoNCE) or ``"siglip"`` (the pairwise sigmoid loss).
        weight: λ, InfoNCE's image→text share.
        queue: ``--queue``'s momentum model and queues, or None.
        ssl: ``--image-ssl``'s heads, or None; ``ssl_weight`` is its W.
        momentum: BYOL's target EMA factor (the queue has its own).
    """

    def __init__(
        self,
        loss: str = "clip",
        weight: float = 0.5,
        *,
        queue: MomentumQueue | None = None,
        ssl: ImageSSL | None = None,
        ssl_weight: float = 1.0,
        momentum: float = 0.995,
    ) -> None:
        assert queue is None or loss == "clip", "the queue extends InfoNCE's denominators"
        self.name, self.weight = loss, weight
        self.queue, self.ssl, self.ssl_weight = queue, ssl, ssl_weight
        self.momentum = momentum

    @property
    def needs_views(self) -> bool:
        return self.ssl is not None

    @property
    def uses_momentum(self) -> bool:
        """Whether a step needs :meth:`targets` (the queue's keys, BYOL's targets)."""
        return self.queue is not None or (self.ssl is not None and self.ssl.needs_target)

    def head_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.ssl.parameters()) if self.ssl is not None else []

    def loss(self, features: Features, targets: Targets) -> LossParts:
        """The loss of the global batch's ``features`` (and the momentum ``targets``)."""
        image, text, scale = features.image, features.text, features.scale.float()
        if self.name == "siglip":
            assert features.bias is not None, "a model trained with SigLIP's loss has a bias"
            image_text = sigmoid_loss(image, text, scale.log(), features.bias.float())
        elif self.queue is not None:
            image_text = queue_contrastive_loss(
                image, text, scale.clamp(max=100.0), self.queue.image.current(),
                self.queue.text.current(), self.weight,
            )  # fmt: skip
        else:
            image_text = contrastive_loss(image, text, scale.log(), weight=self.weight)
        if self.ssl is None:
            return LossParts(image_text, image_text)
        assert features.views is not None, "--image-ssl needs the two views of each image"
        ssl = self.ssl.loss(features.views, targets.views)
        return LossParts(image_text + self.ssl_weight * ssl, image_text, ssl)

    @torch.no_grad()
    def targets(
        self, pixels: torch.Tensor, views: torch.Tensor | None, tokens: torch.Tensor
    ) -> Targets:
        """The momentum networks' outputs for a local batch: pixels (B, 3, H, W), views
        (B, 2, 3, H, W) or None, tokens (B, L). Gathering is the step's."""
        keys = self.queue.keys(pixels, tokens) if self.queue is not None else None
        view_targets = None
        if self.ssl is not None and self.ssl.needs_target:
            assert views is not None
            view_targets = self.ssl.targets(views.transpose(0, 1).flatten(0, 1))
            view_targets = view_targets.unflatten(0, (2, -1))  # (2, B, P)
        return Targets(keys, view_targets)

    def after_update(self, model: Any, targets: Targets) -> None:
        """After the optimiser's step: the momentum networks follow, the keys are queued."""
        if self.queue is not None and targets.keys is not None:
            self.queue.after_update(model, targets.keys)
        if self.ssl is not None:
            self.ssl.follow(model.visual, self.momentum)

    def resume_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.queue is not None:
            state["queue"] = self.queue.resume_state()
        if self.ssl is not None:
            state["ssl"] = self.ssl.resume_state()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        if self.queue is not None:
            self.queue.restore(state["queue"])
        if self.ssl is not None:
            self.ssl.restore(state["ssl"])
