"""The networks and loss pieces of the PyTorch protocol loop (`benchmarks.pytorch.protocol`).

The same networks as `aanets_tf` with its default shared stem, written the way
the authors' public PyTorch code runs them: NCHW tensors, eager execution,
images normalised before the step; stable convolutions multiply frozen kernels
by per-channel scales before the convolution, as their `Conv2dMtl` does.

The step benchmark's reference is `benchmarks.pytorch.authors`, the authors'
own layout and loop (a stem per branch, their optimiser groups, the teacher
recorded by autograd, Level 2's full backward pass). This module keeps what
the protocol loop was written against; where it departs from the authors'
code it is in their favour or neutral: the AANet's stem is one stable stem
shared by both branches (SPEC section 2), and the old-class weights are
frozen (`requires_grad=False`; theirs sit in the optimizer with learning
rate 0).

torch is an optional benchmark requirement (`benchmarks.pytorch.REQUIREMENTS`),
never needed by the library or the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The layers and the input's normalisation and layout (`to_nchw`, for the protocol loop)
# are the authors' code path's.
from benchmarks.pytorch.authors import BasicBlock, _conv, to_nchw  # noqa: F401


def _level(in_channels, out_channels, blocks, stride, stable, last):
    return nn.Sequential(*[
        BasicBlock(in_channels if i == 0 else out_channels, out_channels,
                   stride if i == 0 else 1, stable, last=last and i == blocks - 1)
        for i in range(blocks)])


def _stem(stable):
    return nn.Sequential(_conv(3, 16, 3, 1, stable), nn.BatchNorm2d(16), nn.ReLU(inplace=True))


LEVELS = ((16, 16, 1), (16, 32, 2), (32, 64, 2))  # (in, out, stride) of each level


class ResNet(nn.Module):
    """ResNet-32 for CIFAR (LUCIR variant, no ReLU after the last block) -> `(b, 64)`."""

    def __init__(self, blocks: int = 5):
        super().__init__()
        self.stem = _stem(stable=False)
        self.levels = nn.ModuleList(
            _level(i, o, blocks, s, False, last=k == len(LEVELS) - 1)
            for k, (i, o, s) in enumerate(LEVELS))

    def forward(self, x):
        x = self.stem(x)
        for level in self.levels:
            x = level(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class AANet(nn.Module):
    """Stable stem, then per level a stable and a plastic level mixed by `alpha_k`."""

    def __init__(self, blocks: int = 5):
        super().__init__()
        self.stem = _stem(stable=True)
        self.stable = nn.ModuleList(_level(i, o, blocks, s, True, last=k == len(LEVELS) - 1)
                                    for k, (i, o, s) in enumerate(LEVELS))
        self.plastic = nn.ModuleList(_level(i, o, blocks, s, False, last=k == len(LEVELS) - 1)
                                     for k, (i, o, s) in enumerate(LEVELS))
        self.alphas = nn.ParameterList(nn.Parameter(torch.tensor(0.5)) for _ in LEVELS)

    def forward(self, x):
        x = self.stem(x)
        last = len(LEVELS) - 1
        for k, (stable, plastic, alpha) in enumerate(zip(self.stable, self.plastic,
                                                         self.alphas)):
            s, p = stable(x), plastic(x)
            if k == last:
                s = F.adaptive_avg_pool2d(s, 1).flatten(1)
                p = F.adaptive_avg_pool2d(p, 1).flatten(1)
            x = alpha * s + (1 - alpha) * p
        return x


class CosineHead(nn.Module):
    """`sigma * cos(f, w_c)`; old-class rows frozen. Returns (logits, cosines)."""

    def __init__(self, features: int, num_old: int, num_new: int):
        super().__init__()
        self.old = (nn.Parameter(torch.randn(num_old, features) * features ** -0.5,
                                 requires_grad=False) if num_old else None)
        self.new = nn.Parameter(torch.randn(num_new, features) * features ** -0.5)
        self.sigma = nn.Parameter(torch.tensor(1.0))

    def forward(self, features):
        weights = self.new if self.old is None else torch.cat([self.old, self.new])
        cosines = F.linear(F.normalize(features, dim=1), F.normalize(weights, dim=1))
        return self.sigma * cosines, cosines


class Network(nn.Module):
    def __init__(self, backbone: nn.Module, num_old: int, num_new: int):
        super().__init__()
        self.backbone = backbone
        self.head = CosineHead(64, num_old, num_new)

    def forward(self, x):
        features = self.backbone(x)
        logits, cosines = self.head(features)
        return logits, cosines, features


def parameter_count(model: nn.Module) -> int:
    """Parameters, frozen ones included (BatchNorm running statistics are buffers)."""
    return sum(p.numel() for p in model.parameters())


def _margin_ranking(cosines, labels, num_old, margin, top_k):
    """LUCIR margin ranking on old-class samples, as the authors' loop computes it."""
    old = labels < num_old
    if not bool(old.any()):
        return cosines.new_zeros(())
    gt = cosines.gather(1, labels[:, None])[old].repeat(1, top_k)
    hardest = cosines[:, num_old:].topk(top_k, dim=1).values[old]
    return F.margin_ranking_loss(gt.reshape(-1), hardest.reshape(-1),
                                 torch.ones_like(gt.reshape(-1)), margin=margin)
