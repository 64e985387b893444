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
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clipkit.infra.distributed import World
from clipkit.score import contrastive_loss, directional_losses, sigmoid_loss

# Substrings of parameter names that AdamW must not decay (besides every 1-D tensor):
# biases, norm layers, the temperature and the embedding tables.
NO_DECAY_NAMES = ("bias", "norm", "ln_", ".ln", "bn", "logit_scale", "logit_bias", "embedding")


@dataclass(frozen=True)
class StepLosses:
    """Loss values of one step (on the global batch)."""

    loss: float
    temperature: float
    image_to_text: float | None = None  # InfoNCE's two directions (loss "clip")
    text_to_image: float | None = None
    bias: float | None = None  # SigLIP's b (loss "siglip")

    def as_record(self) -> dict[str, float]:
        """The ``metrics.jsonl`` fields: the loss under its objective's name, its parts."""
        if self.bias is not None:
            return {"loss_siglip": self.loss, "bias": self.bias, "temperature": self.temperature}
        assert self.image_to_text is not None and self.text_to_image is not None
        return {
            "loss_image_to_text": self.image_to_text,
            "loss_text_to_image": self.text_to_image,
            "temperature": self.temperature,
        }


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


def objective_loss(
    objective: str,
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    weight: float,
) -> torch.Tensor:
    """The training loss of (S, D) features: ``"clip"``, InfoNCE both ways weighted by λ, or
    ``"siglip"``, the pairwise sigmoid loss (which needs the model's ``bias``). ``scale`` is
    ``exp(logit_scale)``, as the model returns it."""
    if objective == "siglip":
        assert bias is not None, "a model trained with SigLIP's loss has a logit bias"
        return sigmoid_loss(image, text, scale.float().log(), bias.float())
    return contrastive_loss(image, text, scale.float().log(), weight=weight)


def full_batch_step(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    objective: str = "clip",
    weight: float,
    world: World,
    autocast: contextlib.AbstractContextManager,
    scaler: torch.amp.GradScaler | None = None,
) -> StepLosses:
    """Forward the whole local batch with autograd, loss on the global batch, backward."""
    with autocast:
        image, text, scale, bias = _outputs(model(pixels, tokens))
    image, text = gather_with_grad(world, image), gather_with_grad(world, text)
    loss = objective_loss(objective, image, text, scale, bias, weight)
    _backward(loss, scaler)
    return _losses(objective, loss, image, text, scale, bias)


def grad_cache_step(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    tokens: torch.Tensor,
    *,
    objective: str = "clip",
    weight: float,
    world: World,
    micro_batch: int,
    autocast: contextlib.AbstractContextManager,
    scaler: torch.amp.GradScaler | None = None,
) -> StepLosses:
    """GradCache (Gao et al. 2021): the full-batch gradient with one micro-batch's activations.

    1. Embed every micro-batch without a graph (saving the RNG state before each).
    2. Compute the loss on the cached (global) features and its gradient for each feature.
    3. Re-run each micro-batch with a graph (same RNG state, so dropout matches) and
       back-propagate its cached feature gradients; parameter gradients accumulate.
    """
    chunks = _chunks(len(pixels), micro_batch)
    rng_states, images, texts = [], [], []
    with torch.no_grad(), autocast:
        for chunk in chunks:
            rng_states.append(_rng_state())
            image, text, scale, bias = _outputs(model(pixels[chunk], tokens[chunk]))
            images.append(image.float())
            texts.append(text.float())
    end_state = _rng_state()
    image = gather_detached(world, torch.cat(images)).requires_grad_()
    text = gather_detached(world, torch.cat(texts)).requires_grad_()
    scale_leaf = scale.detach().float().requires_grad_()
    bias_leaf = None if bias is None else bias.detach().float().requires_grad_()
    loss = objective_loss(objective, image, text, scale_leaf, bias_leaf, weight)
    loss.backward()
    # DistributedDataParallel averages parameter gradients over ranks, while each rank's
    # features only reach its own parameters: scale them by W so the average is the sum.
    # The temperature's gradient is already the full one on every rank.
    local = slice(world.rank * len(pixels), (world.rank + 1) * len(pixels))
    assert image.grad is not None and text.grad is not None  # leaves that required grad
    assert scale_leaf.grad is not None
    image_grad = image.grad[local] * world.size
    text_grad = text.grad[local] * world.size
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        # no_sync: a DistributedDataParallel's, which model is whenever the world is distributed
        sync = contextlib.nullcontext() if last or not world.distributed else model.no_sync()  # type: ignore[operator]
        _set_rng_state(rng_states[number])
        with sync:
            with autocast:
                image_part, text_part, scale_out, bias_out = _outputs(
                    model(pixels[chunk], tokens[chunk])
                )
            surrogate = (image_part.float() * image_grad[chunk]).sum() + (
                text_part.float() * text_grad[chunk]
            ).sum()
            if last:  # the temperature's (and the bias's) gradient, once
                surrogate = surrogate + scale_out.float() * scale_leaf.grad
                if bias_out is not None and bias_leaf is not None and bias_leaf.grad is not None:
                    surrogate = surrogate + bias_out.float() * bias_leaf.grad
            _backward(surrogate, scaler)
    _set_rng_state(end_state)
    return _losses(objective, loss, image.detach(), text.detach(), scale_leaf, bias_leaf)


def _outputs(
    outputs: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(image, text, exp(logit_scale), logit_bias or None) of an open_clip forward."""
    image, text, scale = outputs[:3]
    return image, text, scale, outputs[3] if len(outputs) > 3 else None


def _backward(value: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if not value.requires_grad:
        return  # both towers and the temperature are frozen: nothing to do
    (scaler.scale(value) if scaler is not None else value).backward()


def _losses(objective: str, loss, image, text, scale, bias) -> StepLosses:
    temperature = 1.0 / float(scale.detach().float().clamp(max=100.0))
    if objective == "siglip":
        return StepLosses(float(loss.detach()), temperature, bias=float(bias.detach()))
    with torch.no_grad():
        image_to_text, text_to_image = directional_losses(
            image.detach(), text.detach(), scale.detach().float().log()
        )
    return StepLosses(
        loss=float(loss.detach()),
        temperature=temperature,
        image_to_text=float(image_to_text),
        text_to_image=float(text_to_image),
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
