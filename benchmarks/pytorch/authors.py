"""The authors' code path for AANets on LUCIR, CIFAR ResNet-32, as the step benchmark's
PyTorch reference (`python -m benchmarks.throughput --torch_reference`).

What their public code (`yaoyao-liu/class-incremental-learning`, folder
`adaptive-aggregation-networks`: `models/modified_resnet_cifar.py`,
`models/modified_resnetmtl_cifar.py`, `models/modified_linear.py`,
`utils/incremental/conv2d_mtl.py`, `utils/process_fp.py`,
`trainer/base_trainer.py`, `trainer/incremental_lucir.py`,
`trainer/zeroth_phase.py`) runs, written again here, choice by choice:
- **Layout and execution**: NCHW tensors, eager mode, `nn.BatchNorm2d`,
  `torch.set_num_threads(cores)`, images normalised before the step (their
  data loader does it).
- **Networks**: each branch is a whole ResNet-32 (`conv1`, `bn1`, `layer1` to
  `layer3`, 8x8 average pooling, `fc`): 3x3 convolutions with padding 1, 1x1
  projections with BatchNorm where the shape changes, no ReLU after the last
  block. The stable branch's convolutions are frozen kernels times learnable
  `(out, in, 1, 1)` scales multiplied into the kernel before the convolution
  (their `Conv2dMtl`). Each branch has its own stem (this project:
  `--stem=per_branch`), and the plastic branch keeps the phase-0 head it was
  copied with, which it never uses.
- **Aggregation** (their `process_inputs_fp`): stem and `layer1` of each
  branch, mixed by the first weight; `layer2` of each, mixed; `layer3` and the
  pooling of each, mixed; the stable branch's classifier.
- **Classifier**: a cosine classifier with a learnable scale; in later phases
  split into the old classes' rows and the new ones' (their
  `SplitCosineLinear`); the margin ranking reads the cosines before the scale.
- **Phase 0** (their `zeroth_phase`): cross-entropy, `loss.backward()`, SGD.
- **Level 1** (their `incremental_lucir`): the frozen previous network runs
  forward with autograd recording (its parameters keep `requires_grad`; its
  features are detached afterwards); CE + less-forget + margin ranking;
  `loss.backward()`; one SGD with three parameter groups: the stable branch
  (the parameters that require a gradient), the plastic branch (all its
  parameters, its unused head included), the old classes' rows at learning
  rate 0 and no weight decay (they still get gradients and momentum).
- **Level 2**: BatchNorm in eval mode, cross-entropy, `loss.backward()` (every
  parameter's gradient, not only the aggregation weights'), SGD on the three
  weights with momentum and the network's weight decay, no clipping.
- **The single-branch baseline** (their `--branch_mode=single`): both branches
  still run, the first plain, the weights fixed at 1; Level 2 runs at
  learning rate 0.

Where it departs from their code: the step is timed on one cached batch (no
data loader, no per-epoch test), at the benchmark's batch size for Level 2
too (theirs: the test batch size, 100). `fidelity` checks the networks
against ours with the same weights.

torch is an optional benchmark requirement (`benchmarks.pytorch.REQUIREMENTS`).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR_MEAN = np.array((0.5071, 0.4866, 0.4409), np.float32)
CIFAR_STD = np.array((0.2009, 0.1984, 0.2023), np.float32)
STEPS = ("phase0", "level1_single", "level1_aanet", "level2_aanet", "eval_plain",
         "eval_aanet")
FEATURES = 64
LEVELS = ((16, 1), (32, 2), (64, 2))  # (filters, stride) of layer1..layer3


# === Layers ===

class ScaledConv2d(nn.Module):
    """A frozen kernel `(out, in, k, k)` times learnable scales `(out, in, 1, 1)`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int):
        super().__init__()
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size),
            requires_grad=False)
        self.scale = nn.Parameter(torch.ones(out_channels, in_channels, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, None, self.stride, self.padding)


def _conv(in_channels, out_channels, kernel_size, stride, scaled):
    padding = kernel_size // 2
    if scaled:
        return ScaledConv2d(in_channels, out_channels, kernel_size, stride, padding)
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class BasicBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride, scaled, last=False):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, stride, scaled)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, scaled)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv(in_channels, out_channels, 1, stride, scaled),
                                            nn.BatchNorm2d(out_channels))
        self.last = last

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return out if self.last else F.relu(out, inplace=True)


class CosineLinear(nn.Module):
    """`sigma * cos(f, w_c)` (sigma optional). Returns `(logits, cosines)`."""

    def __init__(self, in_features: int, out_features: int, sigma: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.uniform_(self.weight, -in_features ** -0.5, in_features ** -0.5)
        self.sigma = nn.Parameter(torch.ones(())) if sigma else None

    def forward(self, features):
        cosines = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return (cosines if self.sigma is None else self.sigma * cosines), cosines


class SplitCosineLinear(nn.Module):
    """The old classes' rows (`fc1`) and the new ones' (`fc2`), one scale."""

    def __init__(self, in_features: int, num_old: int, num_new: int):
        super().__init__()
        self.fc1 = CosineLinear(in_features, num_old, sigma=False)
        self.fc2 = CosineLinear(in_features, num_new, sigma=False)
        self.sigma = nn.Parameter(torch.ones(()))

    def forward(self, features):
        cosines = torch.cat([self.fc1(features)[1], self.fc2(features)[1]], dim=1)
        return self.sigma * cosines, cosines


class ResNet32(nn.Module):
    """One branch: a CIFAR ResNet (`blocks` per layer; 5: ResNet-32) with a cosine head.

    `scaled`: the stable branch (frozen kernels times scales). `forward` returns
    `(logits, cosines, features)`; `group(k, x)` is the k-th of the three parts
    the aggregation mixes.
    """

    def __init__(self, num_classes: int, blocks: int = 5, scaled: bool = False):
        super().__init__()
        self.conv1 = _conv(3, 16, 3, 1, scaled)
        self.bn1 = nn.BatchNorm2d(16)
        in_channels = 16
        for k, (filters, stride) in enumerate(LEVELS):
            last = k == len(LEVELS) - 1
            setattr(self, f"layer{k + 1}", nn.Sequential(*[
                BasicBlock(in_channels if i == 0 else filters, filters, stride if i == 0 else 1,
                           scaled, last=last and i == blocks - 1)
                for i in range(blocks)]))
            in_channels = filters
        self.fc = CosineLinear(FEATURES, num_classes)

    def group(self, k: int, x):
        if k == 0:
            return self.layer1(F.relu(self.bn1(self.conv1(x)), inplace=True))
        if k == 1:
            return self.layer2(x)
        x = self.layer3(x)
        return F.avg_pool2d(x, x.shape[-1]).flatten(1)  # their 8x8 AvgPool2d

    def features(self, x):
        for k in range(len(LEVELS)):
            x = self.group(k, x)
        return x

    def forward(self, x):
        features = self.features(x)
        return (*self.fc(features), features)


class AANet(nn.Module):
    """The stable branch `b1` and the plastic branch `b2` mixed per group by `alphas`."""

    def __init__(self, b1: ResNet32, b2: ResNet32, alpha: float = 0.5):
        super().__init__()
        self.b1, self.b2 = b1, b2
        self.alphas = nn.ParameterList(nn.Parameter(torch.full((1,), float(alpha)))
                                       for _ in LEVELS)

    def features(self, x):
        for k, alpha in enumerate(self.alphas):
            x = alpha * self.b1.group(k, x) + (1 - alpha) * self.b2.group(k, x)
        return x

    def forward(self, x):
        features = self.features(x)
        return (*self.b1.fc(features), features)


def stable_from_plain(plain: ResNet32, num_new: int, blocks: int) -> ResNet32:
    """The next phase's first branch: `plain`'s kernels frozen under scales of 1, its
    BatchNorm, and a split head (its rows as the old ones, new rows, its sigma)."""
    state = {name: value for name, value in plain.state_dict().items()
             if not name.startswith("fc.")}
    scaled = ResNet32(plain.fc.weight.shape[0], blocks, scaled=True)
    missing, unexpected = scaled.load_state_dict(state, strict=False)
    left = [n for n in missing if not (n.endswith(".scale") or n.startswith("fc."))]
    if left or unexpected:
        raise ValueError(f"The branches differ: missing {left}, unexpected {unexpected}.")
    return _split_head(scaled, plain, num_new)


def _split_head(branch: ResNet32, plain: ResNet32, num_new: int) -> ResNet32:
    head = SplitCosineLinear(FEATURES, plain.fc.weight.shape[0], num_new)
    with torch.no_grad():
        head.fc1.weight.copy_(plain.fc.weight)
        head.sigma.copy_(plain.fc.sigma)
    branch.fc = head
    return branch


def parameter_count(model: nn.Module) -> int:
    """Parameters, frozen ones included (BatchNorm running statistics are buffers)."""
    return sum(p.numel() for p in model.parameters())


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """Pixel values `(b, H, W, 3)` in [0, 255] -> normalised `(b, 3, H, W)` float32."""
    x = (np.asarray(images, np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# === Losses and steps ===

def lucir_loss(outputs, teacher_features, labels, num_old, less_forget_weight, margin, top_k):
    """`(total, (ce, less_forget, margin_ranking))` of LUCIR, as their loop computes it."""
    logits, cosines, features = outputs
    ce = F.cross_entropy(logits, labels)
    lf = F.cosine_embedding_loss(features, teacher_features.detach(),
                                 torch.ones(features.shape[0])) * less_forget_weight
    old = labels < num_old
    if bool(old.any()):
        k = min(top_k, cosines.shape[1] - num_old)
        gt = cosines.gather(1, labels[:, None])[old].repeat(1, k)
        hardest = cosines[:, num_old:].topk(k, dim=1).values[old]
        mr = F.margin_ranking_loss(gt.reshape(-1, 1), hardest.reshape(-1, 1),
                                   torch.ones(gt.numel(), 1), margin=margin)
    else:
        mr = cosines.new_zeros(())
    return ce + lf + mr, (ce, lf, mr)


def level1_optimizer(aanet: AANet, learning_rate, momentum, weight_decay):
    """Their Level-1 SGD: stable branch, plastic branch, old rows at learning rate 0."""
    old_rows = list(aanet.b1.fc.fc1.parameters())
    skip = {id(p) for p in old_rows}
    stable = [p for p in aanet.b1.parameters() if id(p) not in skip and p.requires_grad]
    return torch.optim.SGD([
        {"params": stable, "lr": learning_rate, "weight_decay": weight_decay},
        {"params": list(aanet.b2.parameters()), "lr": learning_rate,
         "weight_decay": weight_decay},
        {"params": old_rows, "lr": 0.0, "weight_decay": 0.0},
    ], lr=learning_rate, momentum=momentum, weight_decay=weight_decay)


class AuthorsSteps:
    """One phase-0 batch and one phase-1 batch, and a callable per step type.

    Args:
        phase0_images, phase0_labels: `(b, H, W, 3)` pixel values and `(b,)`
            positions in `[0, num_old)`.
        phase1_images, phase1_labels: the same for phase 1, positions in
            `[0, num_old + num_new)`.
        eval_images: `(b, H, W, 3)` for the inference steps.
        num_old, num_new: classes of phase 0 and of phase 1.
        learning_rate, momentum, weight_decay: the SGD of phase 0 and Level 1.
        aggregation_lr: Level 2's learning rate (momentum and weight decay: the
            network's, as theirs).
        less_forget_weight, margin, top_k: LUCIR's loss settings.
        threads: `torch.set_num_threads` (default: the machine's cores).
        blocks: BasicBlocks per layer (5: ResNet-32).
    """

    def __init__(self, phase0_images, phase0_labels, phase1_images, phase1_labels,
                 eval_images, *, num_old: int, num_new: int, learning_rate: float,
                 momentum: float, weight_decay: float, aggregation_lr: float,
                 less_forget_weight: float, margin: float, top_k: int,
                 threads: int | None = None, blocks: int = 5, seed: int = 0):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.num_old, self.margin, self.top_k = num_old, margin, top_k
        self.less_forget_weight = less_forget_weight
        self.x0, self.y0 = to_nchw(phase0_images), torch.as_tensor(phase0_labels).long()
        self.x1, self.y1 = to_nchw(phase1_images), torch.as_tensor(phase1_labels).long()
        self.x_eval = to_nchw(eval_images)
        self.batch = int(self.x1.shape[0])

        # Phase 0: the network `phase0` trains; the teacher: a trained phase-0 network.
        self.plain = ResNet32(num_old, blocks)
        self.teacher = ResNet32(num_old, blocks).eval()
        # Phase 1 as their `init_current_phase_model` builds it from the teacher.
        self.aanet = AANet(stable_from_plain(self.teacher, num_new, blocks),
                           copy.deepcopy(self.teacher))
        self.single = AANet(_split_head(copy.deepcopy(self.teacher), self.teacher, num_new),
                            copy.deepcopy(self.teacher), alpha=1.0)
        self.alphas = list(self.aanet.alphas)

        def sgd(params, lr):
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

        self.optimizers = {
            "phase0": sgd(self.plain.parameters(), learning_rate),
            "level1_single": level1_optimizer(self.single, learning_rate, momentum,
                                              weight_decay),
            "level1_aanet": level1_optimizer(self.aanet, learning_rate, momentum,
                                             weight_decay),
            "level2_aanet": sgd(self.aanet.alphas, aggregation_lr),
        }

    # === Steps ===
    def phase0(self) -> float:
        self.plain.train()
        optimizer = self.optimizers["phase0"]
        optimizer.zero_grad()
        loss = F.cross_entropy(self.plain(self.x0)[0], self.y0)
        loss.backward()
        optimizer.step()
        return loss.item()

    def _level1(self, aanet: AANet, optimizer) -> float:
        aanet.train()
        optimizer.zero_grad()
        outputs = aanet(self.x1)
        teacher_features = self.teacher(self.x1)[2]  # recorded by autograd, as theirs
        loss, _ = lucir_loss(outputs, teacher_features, self.y1, self.num_old,
                             self.less_forget_weight, self.margin, self.top_k)
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
        optimizer.zero_grad()
        loss = F.cross_entropy(self.aanet(self.x1)[0], self.y1)
        loss.backward()
        optimizer.step()
        return loss.item()

    def _predict(self, network) -> float:
        network.eval()
        with torch.no_grad():
            logits = network(self.x_eval)[0]
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
        """Parameters of the phase-0 network and of the phase-1 AANet (both branches, the
        plastic branch's unused head and the three aggregation weights included)."""
        return {"plain_phase0": parameter_count(self.plain),
                "aanet_phase1": parameter_count(self.aanet)}
