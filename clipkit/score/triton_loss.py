"""Fused Triton kernels for the contrastive loss on CUDA: fp16/bf16 inputs, fp32 accumulation.

Same mathematics as ``tiled_loss.py``, with nothing of size S x S ever in memory:

* ``_lse_kernel`` gives each program a block of rows of X (kept in registers) and streams all
  rows of Y, keeping a running (max, sum-exp) of ``scale · x·y``; run on (A, B) it yields the
  row log-sum-exps and the diagonal, run on (B, A) the column log-sum-exps.
* ``_grad_kernel`` recomputes each logit tile, forms ``G`` in registers and accumulates
  ``dX = scale · G Y`` and the per-row partial sums of ``G ∘ (X Yᵀ)`` for the scale's gradient;
  run on (A, B) it gives dA, on (B, A) with the roles of the log-sum-exps swapped, dB.

Six matmul-equivalents in all (two forward, four backward), fused with the exponentials. A row
block of X lives in registers, so ``clipkit.score`` routes only D <= ``MAX_TRITON_DIM`` here.
Runs under ``TRITON_INTERPRET=1`` on the CPU, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clipkit.score.tiled_loss import loss_from_logsumexps

GPU_BLOCKS = {"block_m": 64, "block_n": 64, "num_warps": 8}


@triton.jit
def _load_rows(ptr, rows, dims, S, D, stride):
    """A (len(rows), len(dims)) block of a row-major (S, D) matrix, zero outside it."""
    mask = (rows < S)[:, None] & (dims[None, :] < D)
    return tl.load(ptr + rows[:, None] * stride + dims[None, :], mask=mask, other=0.0)


@triton.jit
def _lse_kernel(
    X,
    Y,
    SCALE,
    LSE,
    DIAG,
    S,
    D,
    stride_x,
    stride_y,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < S
    x = _load_rows(X, rows, dims, S, D, stride_x)
    scale = tl.load(SCALE).to(tl.float32)
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    diagonal = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        y = _load_rows(Y, cols, dims, S, D, stride_y)
        dots = tl.dot(x, tl.trans(y), input_precision=PRECISION)
        logits = tl.where(col_ok[None, :], dots * scale, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, 1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), 1
        )
        running_max = new_max
        diagonal += tl.sum(tl.where(rows[:, None] == cols[None, :], logits, 0.0), 1)
    tl.store(LSE + rows, running_max + tl.log(running_sum), mask=row_ok)
    tl.store(DIAG + rows, diagonal, mask=row_ok)


@triton.jit
def _grad_kernel(
    X,
    Y,
    SCALE,
    LSE_X,
    LSE_Y,
    GRAD_X,
    PARTIAL,
    S,
    D,
    stride_x,
    stride_y,
    stride_g,
    share_x,
    share_y,
    inv_size,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < S
    x = _load_rows(X, rows, dims, S, D, stride_x)
    scale = tl.load(SCALE).to(tl.float32)
    lse_x = tl.load(LSE_X + rows, mask=row_ok, other=0.0)
    grad = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    partial = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, S, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        y = _load_rows(Y, cols, dims, S, D, stride_y)
        # +inf for padding columns makes their exp(logit - lse) exactly 0.
        lse_y = tl.load(LSE_Y + cols, mask=col_ok, other=float("inf"))
        dots = tl.dot(x, tl.trans(y), input_precision=PRECISION)
        logits = dots * scale
        g = share_x * tl.exp(logits - lse_x[:, None]) + share_y * tl.exp(logits - lse_y[None, :])
        g = tl.where(rows[:, None] == cols[None, :], g - inv_size, g)
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        partial += tl.sum(g * dots, 1)
        grad = tl.dot(g.to(y.dtype), y, grad, input_precision=PRECISION)
    tl.store(
        GRAD_X + rows[:, None] * stride_g + dims[None, :],
        grad * scale,
        mask=row_ok[:, None] & (dims[None, :] < D),
    )
    tl.store(PARTIAL + rows, partial, mask=row_ok)


class TritonContrastiveLoss(torch.autograd.Function):
    """Autograd function ``(A (S,D), B (S,D), scale (), weight, blocks) -> loss ()``."""

    @staticmethod
    def forward(ctx, a, b, scale, weight: float, blocks: dict):
        a, b = a.contiguous(), b.contiguous()
        scale32 = scale.detach().float().reshape(())
        row_lse, diagonal = _logsumexp(a, b, scale32, blocks)
        col_lse, _ = _logsumexp(b, a, scale32, blocks)
        loss = loss_from_logsumexps(row_lse, col_lse, diagonal, weight)
        ctx.save_for_backward(a, b, scale32, row_lse, col_lse)
        ctx.weight, ctx.blocks, ctx.scale_dtype = weight, blocks, scale.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        a, b, scale32, row_lse, col_lse = ctx.saved_tensors
        size, weight = a.shape[0], ctx.weight
        grad_a, partial = _gradient(
            a, b, scale32, row_lse, col_lse, weight / size, (1 - weight) / size, ctx.blocks
        )
        grad_b, _ = _gradient(
            b, a, scale32, col_lse, row_lse, (1 - weight) / size, weight / size, ctx.blocks
        )
        grad_scale = partial.sum().to(ctx.scale_dtype)
        return grad_a * grad_loss, grad_b * grad_loss, grad_scale * grad_loss, None, None


def triton_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    weight: float = 0.5,
    blocks: dict | None = None,
) -> torch.Tensor:
    """The contrastive loss through the fused kernels (``scale`` already clamped and exp'd)."""
    return TritonContrastiveLoss.apply(
        image_features, text_features, scale, weight, blocks or GPU_BLOCKS
    )


def _launch_args(x: torch.Tensor, blocks: dict) -> tuple[tuple[int], dict]:
    size, dim = x.shape
    grid = (triton.cdiv(size, blocks["block_m"]),)
    meta = {
        "BLOCK_M": blocks["block_m"],
        "BLOCK_N": blocks["block_n"],
        "BLOCK_D": max(16, triton.next_power_of_2(dim)),
        # fp32 inputs (the interpreter tests) get exact products; fp16/bf16 ignore the setting.
        "PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
    }
    if "num_warps" in blocks:
        meta["num_warps"] = blocks["num_warps"]
    return grid, meta


def _logsumexp(x, y, scale32, blocks):
    size, dim = x.shape
    lse = torch.empty(size, device=x.device, dtype=torch.float32)
    diagonal = torch.empty_like(lse)
    grid, meta = _launch_args(x, blocks)
    _lse_kernel[grid](x, y, scale32, lse, diagonal, size, dim, x.stride(0), y.stride(0), **meta)
    return lse, diagonal


def _gradient(x, y, scale32, lse_x, lse_y, share_x, share_y, blocks):
    size, dim = x.shape
    grad = torch.empty(size, dim, device=x.device, dtype=torch.float32)
    partial = torch.empty(size, device=x.device, dtype=torch.float32)
    grid, meta = _launch_args(x, blocks)
    _grad_kernel[grid](
        x,
        y,
        scale32,
        lse_x,
        lse_y,
        grad,
        partial,
        size,
        dim,
        x.stride(0),
        y.stride(0),
        grad.stride(0),
        share_x,
        share_y,
        1.0 / size,
        **meta,
    )
    return grad.to(x.dtype), partial
