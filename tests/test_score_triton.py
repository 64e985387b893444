"""The fused Triton loss against the reference: on the CPU through Triton's interpreter, and
on CUDA (``gpu`` marker) with bf16 inputs; plus the CUDA top-k and tiled paths."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

# Runs in a fresh process: Triton decides at kernel definition whether to interpret.
INTERPRETED_CHECK = textwrap.dedent(
    """
    import json, math, torch
    import torch.nn.functional as F
    from clipkit.score import reference
    from clipkit.score.triton_loss import triton_contrastive_loss

    blocks = {"block_m": 16, "block_n": 16}
    results = []
    for size, dim, weight, temperature in [(1, 8, 0.5, 0.07), (20, 24, 0.5, 0.07),
                                           (37, 16, 0.3, 1.0), (33, 40, 0.8, 0.01)]:
        g = torch.Generator().manual_seed(size * 100 + dim)
        a = F.normalize(torch.randn(size, dim, generator=g), dim=1)
        b = F.normalize(torch.randn(size, dim, generator=g), dim=1)
        b[: size // 3] = a[: size // 3]  # some duplicated rows
        scale = torch.tensor(min(1 / temperature, 100.0))
        outs = []
        for fn in (triton_contrastive_loss, reference.contrastive_loss):
            x, y, s = a.clone().requires_grad_(), b.clone().requires_grad_(), scale.clone()
            s.requires_grad_()
            kwargs = {"blocks": blocks} if fn is triton_contrastive_loss else {}
            loss = fn(x, y, s, weight, **kwargs)
            outs.append([loss.detach(), *torch.autograd.grad(loss, [x, y, s])])
        (loss, *grads), (ref, *ref_grads) = outs
        rel = [float((g1 - g2).norm() / g2.norm().clamp_min(1e-30)) for g1, g2 in
               zip(grads, ref_grads)]
        results.append({"size": size, "loss": float(loss), "ref": float(ref), "grad_rel": rel})
    print(json.dumps(results))
    """
)


@pytest.mark.e2e
def test_triton_kernels_match_the_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", INTERPRETED_CHECK], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for case in json.loads(out.stdout.strip().splitlines()[-1]):
        assert case["loss"] == pytest.approx(case["ref"], rel=1e-5, abs=1e-6), case
        assert max(case["grad_rel"]) <= 1e-4, case


def _unit(size, dim, seed, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(size, dim, generator=g), dim=1).to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("size", [1, 100, 4097])
@pytest.mark.parametrize("dim", [64, 512])
def test_triton_bf16_matches_the_fp32_reference_on_cuda(size, dim):
    from clipkit import score
    from clipkit.score import reference

    assert score.loss_backend("cuda")[0] == "triton"
    a, b = _unit(size, dim, 1), _unit(size, dim, 2)
    logit_scale = torch.tensor(math.log(1 / 0.07), device="cuda")
    x, y = a.bfloat16().requires_grad_(), b.bfloat16().requires_grad_()
    s = logit_scale.clone().requires_grad_()
    loss = score.contrastive_loss(x, y, s)
    grads = torch.autograd.grad(loss, [x, y, s])
    # The reference sees the same bf16-rounded inputs, in fp32.
    x2, y2 = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    s2 = logit_scale.clone().requires_grad_()
    ref = reference.contrastive_loss(x2, y2, s2.exp())
    ref_grads = torch.autograd.grad(ref, [x2, y2, s2])
    assert loss.item() == pytest.approx(ref.item(), rel=2e-3)
    for got, want in zip(grads, ref_grads, strict=True):
        assert float((got.float() - want).norm() / want.norm().clamp_min(1e-30)) < 2e-2


@pytest.mark.gpu
def test_tiled_path_on_cuda_matches_reference():
    from clipkit.score import reference
    from clipkit.score.tiled_loss import tiled_contrastive_loss

    a, b = _unit(3000, 128, 3), _unit(3000, 128, 4)
    scale = torch.tensor(1 / 0.07, device="cuda")
    got = tiled_contrastive_loss(a, b, scale, 0.5, 1024)
    want = reference.contrastive_loss(a, b, scale, 0.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.gpu
def test_topk_on_cuda_with_float16_keys_matches_the_cpu():
    from clipkit import score

    keys, queries = _unit(50_000, 64, 5, "cpu"), _unit(16, 64, 6, "cpu")
    cpu_scores, cpu_ids = score.topk(queries, keys, 10)
    gpu_scores, gpu_ids = score.topk(queries.cuda(), keys.half().cuda(), 10)
    assert (gpu_ids.cpu() == cpu_ids).float().mean() > 0.95  # fp16 keys may swap near-ties
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, atol=2e-3, rtol=0)
