"""The AANets steps in PyTorch, for `python -m benchmarks.throughput --torch_reference`.

The same networks and steps as `aanets_tf`, written the way the authors'
public PyTorch code runs them: NCHW tensors, eager execution, one
`torch.optim.SGD` per parameter group, `torch.set_num_threads(cores)`, images
normalised before the step (their data loader does it):
- `phase0`: plain ResNet-32 + cosine classifier, cross-entropy, SGD with
  momentum and weight decay;
- `level1_single`: the single-branch (LUCIR) step of a later phase: ResNet-32
  and the frozen phase-0 teacher, CE + less-forget + margin ranking;
- `level1_aanet`: the AANet Level-1 step: stable blocks (frozen kernels times
  per-channel scales, multiplied into the kernel before the convolution as
  the authors' `Conv2dMtl` does), plastic blocks, aggregation weights, the
  frozen teacher's forward pass, the same three losses;
- `level2_aanet`: BatchNorm in eval mode, cross-entropy, the gradient of the
  aggregation weights only (`torch.autograd.grad`; the authors' loop calls
  `loss.backward()`, which also computes every other parameter's gradient
  and is slower), SGD on the three weights, clipped to [0, 1] as ours;
- `eval_plain`, `eval_aanet`: eval mode under `torch.no_grad()`.

Differences from the authors' code, each in their favour or neutral: the
teacher runs under `torch.no_grad()` (they record its graph and detach the
features); the AANet's stem is one stable stem shared by both branches (SPEC
section 2; theirs runs a stem per branch), so the parameter counts equal
ours, which `parameter_count` lets the benchmark assert; the old-class
weights are frozen (`requires_grad=False`; theirs sit in the optimizer with
learning rate 0).

torch is an optional benchmark requirement (`benchmarks.pytorch.REQUIREMENTS`),
never needed by the library or the tests.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = np.array((0.5071, 0.4866, 0.4409), np.float32)
CIFAR_STD = np.array((0.2009, 0.1984, 0.2023), np.float32)
STEPS = ("phase0", "level1_single", "level1_aanet", "level2_aanet", "eval_plain",
         "eval_aanet")


def _init_conv(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


class StableConv2d(nn.Module):
    """A frozen kernel `(out, in, k, k)` times learnable scales `(out, in, 1, 1)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size), requires_grad=False)
        self.scale = nn.Parameter(torch.ones(out_channels, in_channels, 1, 1))
        _init_conv(self.weight)
        self.stride, self.padding = stride, kernel_size // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, None, self.stride, self.padding)


def _conv(in_channels, out_channels, kernel_size, stride, stable):
    if stable:
        return StableConv2d(in_channels, out_channels, kernel_size, stride)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                     bias=False)
    _init_conv(conv.weight)
    return conv


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride, stable, final_relu):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, stable)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, stable)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv(in_channels, out_channels, 1, stride, stable),
                                            nn.BatchNorm2d(out_channels))
        self.final_relu = final_relu

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True) if self.final_relu else out


def _level(in_channels, out_channels, blocks, stride, stable, last):
    return nn.Sequential(*[
        BasicBlock(in_channels if i == 0 else out_channels, out_channels,
                   stride if i == 0 else 1, stable, final_relu=not (last and i == blocks - 1))
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


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """Pixel values `(b, H, W, 3)` in [0, 255] -> normalised `(b, 3, H, W)` float32."""
    x = (np.asarray(images, np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _margin_ranking(cosines, labels, num_old, margin, top_k):
    """LUCIR margin ranking on old-class samples, as the authors' loop computes it."""
    old = labels < num_old
    if not bool(old.any()):
        return cosines.new_zeros(())
    gt = cosines.gather(1, labels[:, None])[old].repeat(1, top_k)
    hardest = cosines[:, num_old:].topk(top_k, dim=1).values[old]
    return F.margin_ranking_loss(gt.reshape(-1), hardest.reshape(-1),
                                 torch.ones_like(gt.reshape(-1)), margin=margin)


class TorchSteps:
    """One phase-0 batch and one phase-1 batch, and a callable per step type.

    Args:
        phase0_images, phase0_labels: `(b, H, W, 3)` pixel values and `(b,)`
            positions in `[0, num_old)`.
        phase1_images, phase1_labels: the same for phase 1, positions in
            `[0, num_old + num_new)`.
        eval_images: `(b, H, W, 3)` for the inference steps.
        num_old, num_new: classes of phase 0 and of phase 1.
        learning_rate, momentum, weight_decay: the Level-1 (and phase-0) SGD.
        aggregation_lr, aggregation_momentum: the Level-2 SGD.
        less_forget_weight, margin, top_k: LUCIR's loss settings.
        threads: `torch.set_num_threads` (default: the machine's cores).
        blocks: BasicBlocks per level (5: ResNet-32).
    """

    def __init__(self, phase0_images, phase0_labels, phase1_images, phase1_labels,
                 eval_images, *, num_old: int, num_new: int, learning_rate: float,
                 momentum: float, weight_decay: float, aggregation_lr: float,
                 aggregation_momentum: float, less_forget_weight: float, margin: float,
                 top_k: int, threads: int | None = None, blocks: int = 5, seed: int = 0):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.num_old, self.margin, self.top_k = num_old, margin, top_k
        self.less_forget_weight = less_forget_weight
        self.x0, self.y0 = to_nchw(phase0_images), torch.as_tensor(phase0_labels).long()
        self.x1, self.y1 = to_nchw(phase1_images), torch.as_tensor(phase1_labels).long()
        self.x_eval = to_nchw(eval_images)

        def sgd(params, lr, momentum, decay):
            return torch.optim.SGD([p for p in params if p.requires_grad], lr=lr,
                                   momentum=momentum, weight_decay=decay)

        self.plain = Network(ResNet(blocks), 0, num_old)  # trained by `phase0`
        self.teacher = Network(ResNet(blocks), 0, num_old).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.single = Network(ResNet(blocks), num_old, num_new)
        self.aanet = Network(AANet(blocks), num_old, num_new)
        self.alphas = list(self.aanet.backbone.alphas)
        level1 = [p for n, p in self.aanet.named_parameters() if "alphas" not in n]
        self.optimizers = {
            "phase0": sgd(self.plain.parameters(), learning_rate, momentum, weight_decay),
            "level1_single": sgd(self.single.parameters(), learning_rate, momentum,
                                 weight_decay),
            "level1_aanet": sgd(level1, learning_rate, momentum, weight_decay),
            "level2_aanet": torch.optim.SGD(self.alphas, lr=aggregation_lr,
                                            momentum=aggregation_momentum),
        }
        self.batch = int(self.x1.shape[0])

    # === Steps ===
    def phase0(self) -> float:
        self.plain.train()
        optimizer = self.optimizers["phase0"]
        optimizer.zero_grad()
        logits, _, _ = self.plain(self.x0)
        loss = F.cross_entropy(logits, self.y0)
        loss.backward()
        optimizer.step()
        return loss.item()

    def _level1(self, network, optimizer) -> float:
        network.train()
        optimizer.zero_grad()
        logits, cosines, features = network(self.x1)
        with torch.no_grad():
            old_features = self.teacher.backbone(self.x1)
        ce = F.cross_entropy(logits, self.y1)
        lf = F.cosine_embedding_loss(features, old_features,
                                     torch.ones(features.shape[0])) * self.less_forget_weight
        mr = _margin_ranking(cosines, self.y1, self.num_old, self.margin, self.top_k)
        loss = ce + lf + mr
        loss.backward()
        optimizer.step()
        return loss.item()

    def level1_single(self) -> float:
        return self._level1(self.single, self.optimizers["level1_single"])

    def level1_aanet(self) -> float:
        return self._level1(self.aanet, self.optimizers["level1_aanet"])

    def level2_aanet(self) -> float:
        self.aanet.eval()
        optimizer = self.optimizers["level2_aanet"]
        logits, _, _ = self.aanet(self.x1)
        loss = F.cross_entropy(logits, self.y1)
        for alpha, grad in zip(self.alphas, torch.autograd.grad(loss, self.alphas)):
            alpha.grad = grad
        optimizer.step()
        with torch.no_grad():
            for alpha in self.alphas:
                alpha.clamp_(0.0, 1.0)
        return loss.item()

    def _predict(self, network) -> float:
        network.eval()
        with torch.no_grad():
            logits, _, _ = network(self.x_eval)
        return float(logits[0, 0])

    def eval_plain(self) -> float:
        return self._predict(self.teacher)

    def eval_aanet(self) -> float:
        return self._predict(self.aanet)

    def run(self, step: str, steps: int) -> float:
        """Run `steps` steps of `step`; returns the last step's loss (or logit)."""
        if step not in STEPS:
            raise ValueError(f"Unknown step. Expected one of {STEPS}. Received: step={step!r}")
        fn = getattr(self, step)
        value = float("nan")
        for _ in range(steps):
            value = fn()
        return value

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the phase-0 network and of the phase-1 AANet network."""
        return {"plain_phase0": parameter_count(self.plain),
                "aanet_phase1": parameter_count(self.aanet)}
