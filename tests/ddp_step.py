"""Helper for test_train_ddp: one training step on a fixed global batch of 8 pairs.

Run plainly it is one process on the whole batch; under ``torchrun --nproc_per_node 2`` each
rank takes its half, wrapped in DistributedDataParallel. Rank 0 saves the loss and gradients
(the model's and the SSL heads') and the queue's gathered keys, for each objective: CLIP's
loss, SigLIP's (on a model given a logit bias), and each with a queue or an SSL term.
Usage: python tests/ddp_step.py OUT.pt (saves {"clip-full": ..., "clip-cache": ...,
"siglip-full": ..., "clip+queue+simclr-full": ..., ...})
"""

import contextlib
import math
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from clipkit.infra import distributed
from clipkit.models import load_model
from clipkit.train.objective import MomentumQueue, Objective
from clipkit.train.ssl import ImageSSL
from clipkit.train.step import full_batch_step, grad_cache_step, momentum_targets

out = sys.argv[1]
world = distributed.current_world()
distributed.start(world, "cpu")
pixels = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
share = 8 // world.size
mine = slice(world.rank * share, (world.rank + 1) * share)
views = torch.randn(8, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
results = {}


def make_objective(name, model, dim):
    """The objective called ``name``: a loss, then what it adds (a queue, an SSL term)."""
    loss, *extras = name.split("+")
    queue = ssl = None
    if "queue" in extras:
        queue = MomentumQueue(model, 16, dim, momentum=0.9)
        for key_queue in (queue.image, queue.text):  # 12 of 16 rows held: the queue and a gap
            keys = torch.randn(12, dim, generator=torch.Generator().manual_seed(len(extras)))
            key_queue.enqueue(torch.nn.functional.normalize(keys, dim=-1))
    methods = [extra for extra in extras if extra != "queue"]
    if methods:
        torch.manual_seed(2)  # the heads start alike in every process
        ssl = ImageSSL(methods[0], dim).train()
        if ssl.needs_target:
            ssl.attach_target(model.visual)
    return Objective(loss, 0.3, queue=queue, ssl=ssl, ssl_weight=0.7, momentum=0.9)


for name in ("clip", "siglip", "clip+queue+simclr", "clip+byol", "siglip+swav", "clip+simsiam"):
    encoder = load_model("clipkit-tiny:random", device="cpu")
    model = encoder.model.train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    if name.startswith("siglip"):
        encoder.add_logit_bias(-3.0)  # before DistributedDataParallel sees the parameters
    tokens = encoder.tokenize([f"caption number {i}" for i in range(8)])
    objective = make_objective(name, model, encoder.embed_dim)
    network = DistributedDataParallel(model) if world.distributed else model
    nothing = contextlib.nullcontext()
    for mode in ("full", "cache"):
        model.zero_grad(set_to_none=True)
        if objective.ssl is not None:
            objective.ssl.zero_grad(set_to_none=True)
        local_views = views[mine] if objective.needs_views else None
        targets = momentum_targets(objective, pixels[mine], tokens[mine], local_views,
                                   world=world, autocast=nothing)  # fmt: skip
        common = {"objective": objective, "world": world, "autocast": nothing,
                  "views": local_views, "targets": targets}  # fmt: skip
        if mode == "full":
            losses = full_batch_step(network, pixels[mine], tokens[mine], **common)
        else:
            losses = grad_cache_step(network, pixels[mine], tokens[mine], micro_batch=3, **common)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if objective.ssl is not None:
            grads |= {f"heads.{n}": p.grad.clone() for n, p in objective.ssl.named_parameters()}
        keys = targets.keys if targets.keys is not None else ()
        results[f"{name}-{mode}"] = {"loss": losses.loss, "ssl": losses.ssl, "grads": grads,
                                     "keys": list(keys)}  # fmt: skip
if world.is_main:
    torch.save(results, out)
distributed.finish(world)
