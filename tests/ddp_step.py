"""Helper for test_train_ddp: one training step on a fixed global batch of 8 pairs.

Run plainly it is one process on the whole batch; under ``torchrun --nproc_per_node 2`` each
rank takes its half, wrapped in DistributedDataParallel. Rank 0 saves the loss and gradients,
for CLIP's loss and for SigLIP's (on a model given a logit bias).
Usage: python tests/ddp_step.py OUT.pt (saves {"clip-full": ..., "clip-cache": ...,
"siglip-full": ..., "siglip-cache": ...})
"""

import contextlib
import math
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from clipkit.infra import distributed
from clipkit.models import load_model
from clipkit.train.objective import Objective
from clipkit.train.step import full_batch_step, grad_cache_step

out = sys.argv[1]
world = distributed.current_world()
distributed.start(world, "cpu")
pixels = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
share = 8 // world.size
mine = slice(world.rank * share, (world.rank + 1) * share)
results = {}
for objective in ("clip", "siglip"):
    encoder = load_model("clipkit-tiny:random", device="cpu")
    model = encoder.model.train()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    if objective == "siglip":
        encoder.add_logit_bias(-3.0)  # before DistributedDataParallel sees the parameters
    tokens = encoder.tokenize([f"caption number {i}" for i in range(8)])
    network = DistributedDataParallel(model) if world.distributed else model
    common = {"objective": Objective(objective, 0.3), "world": world,
              "autocast": contextlib.nullcontext()}  # fmt: skip
    for mode in ("full", "cache"):
        model.zero_grad(set_to_none=True)
        if mode == "full":
            losses = full_batch_step(network, pixels[mine], tokens[mine], **common)
        else:
            losses = grad_cache_step(network, pixels[mine], tokens[mine], micro_batch=3, **common)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[f"{objective}-{mode}"] = {"loss": losses.loss, "grads": grads}
if world.is_main:
    torch.save(results, out)
distributed.finish(world)
