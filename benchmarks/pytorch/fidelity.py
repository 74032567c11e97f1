"""Is `benchmarks.pytorch.authors` the network ours is? The same weights in both, the
same batch, the same losses.

`check(bench)` takes a `benchmarks.throughput.StepBench` built with
`--stem=per_branch` (the authors' layout: a stem per branch), gives its
networks' weights, perturbed so that no part is at its initial value
(BatchNorm statistics and affine weights, stable scales, aggregation weights,
plastic kernels, the head), to the authors' networks, and compares on the
bench's cached batches:
- the phase-0 loss (cross-entropy, BatchNorm on the batch's statistics);
- the Level-1 loss of the AANet and each LUCIR term (against the teacher);
- the Level-2 loss (BatchNorm on its moving statistics) and the AANet's logits;
- the parameter counts: the phase-0 networks' equal; the authors' AANet has
  ours plus the plastic branch's unused phase-0 head.

One difference is set aside for the check: at stride 2, a 3x3 convolution
with TensorFlow's "same" padding pads one row and column at the bottom and
right, PyTorch's `padding=1` one on every side (the same work, a grid shifted
by a pixel); for the comparison the authors' stride-2 convolutions pad as
TensorFlow does. Timing runs them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.pytorch import authors

RTOL = 1e-4


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _pad_as_tensorflow(module: torch.nn.Module) -> None:
    """Stride-2 3x3 convolutions of `module` pad bottom/right only (TensorFlow's "same")."""
    def pad(_, args):
        return (F.pad(args[0], (0, 1, 0, 1)),)

    for conv in module.modules():
        stride = getattr(conv, "stride", None)
        stride = stride[0] if isinstance(stride, tuple) else stride
        weight = getattr(conv, "weight", None)
        if stride == 2 and weight is not None and weight.dim() == 4 and weight.shape[-1] == 3:
            conv.padding = (0, 0) if isinstance(conv, torch.nn.Conv2d) else 0
            conv.register_forward_pre_hook(pad)


def _pairs(branch: authors.ResNet32) -> list:
    """The branch's (convolution, BatchNorm) pairs in our `conv_bn_pairs` order."""
    pairs = [(branch.conv1, branch.bn1)]
    for k in range(len(authors.LEVELS)):
        for block in getattr(branch, f"layer{k + 1}"):
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            if block.downsample is not None:
                pairs.append((block.downsample[0], block.downsample[1]))
    return pairs


def _keras_pairs(backbone, stem: str, level: str) -> list:
    pairs = list(backbone.get_layer(stem).conv_bn_pairs())
    for k in range(len(authors.LEVELS)):
        pairs += backbone.get_layer(f"{level}{k + 1}").conv_bn_pairs()
    return pairs


def _numpy(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def _copy_branch(keras_pairs: list, branch: authors.ResNet32) -> None:
    from aanets_tf.models.stable_conv import StableConv2D

    ours, theirs = keras_pairs, _pairs(branch)
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} convolutions in ours, {len(theirs)} in theirs.")
    with torch.no_grad():
        for (conv, bn), (tconv, tbn) in zip(ours, theirs):
            tconv.weight.copy_(torch.from_numpy(_numpy(conv.kernel).transpose(3, 2, 0, 1)))
            if isinstance(conv, StableConv2D):
                tconv.scale.copy_(torch.from_numpy(_numpy(conv.scale).transpose(3, 2, 0, 1)))
            tbn.weight.copy_(torch.from_numpy(_numpy(bn.gamma)))
            tbn.bias.copy_(torch.from_numpy(_numpy(bn.beta)))
            tbn.running_mean.copy_(torch.from_numpy(_numpy(bn.moving_mean)))
            tbn.running_var.copy_(torch.from_numpy(_numpy(bn.moving_variance)))


def _copy_head(head, fc) -> None:
    with torch.no_grad():
        if isinstance(fc, authors.SplitCosineLinear):
            fc.fc1.weight.copy_(torch.from_numpy(_numpy(head.old_weights).T))
            fc.fc2.weight.copy_(torch.from_numpy(_numpy(head.new_weights).T))
        else:
            fc.weight.copy_(torch.from_numpy(_numpy(head.class_weights()).T))
        fc.sigma.copy_(torch.tensor(float(_numpy(head.sigma))))


def _perturb(network, rng: np.random.Generator) -> None:
    """Move every weight of a Keras network off its initial value (within sane ranges)."""
    for variable in network.weights:
        name = variable.path
        value = _numpy(variable)
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, value.shape)
        elif name.endswith(("moving_mean", "beta")):
            value = value + rng.normal(0.0, 0.1, value.shape)
        elif name.endswith(("gamma", "scale")):
            value = value * rng.uniform(0.8, 1.2, value.shape)
        elif name.endswith("kernel") and variable.trainable:
            value = value * rng.uniform(0.9, 1.1, value.shape)
        elif name.endswith("sigma"):
            value = value * 1.5
        else:
            continue
        variable.assign(value.astype(np.float32))


def check(bench, less_forget_weight: float, margin: float, top_k: int, seed: int = 0) -> dict:
    """The losses and counts of `bench`'s networks and of the authors' networks given the
    same weights. Raises AssertionError naming every value that differs."""
    import keras
    import tensorflow as tf

    from aanets_tf.models.aggregation import Aggregation
    from aanets_tf.models.network import backbone_of, classifier_of, parameter_counts

    rng = np.random.default_rng(seed)
    plain_net = bench.learners["phase0"].network
    teacher_net = bench.networks["eval_plain"]
    aanet_learner = bench.learners["level1_aanet"]
    aanet_net = aanet_learner.network
    for network in (plain_net, teacher_net):
        _perturb(network, rng)
    _perturb(aanet_net, rng)
    aanet_backbone = backbone_of(aanet_net)
    if aanet_backbone.stem != "per_branch":
        raise ValueError("The fidelity check needs our AANet with --stem=per_branch (a stem "
                         f"per branch, as the authors' code). Received: stem="
                         f"{aanet_backbone.stem!r}")
    for layer, alpha in zip([l for l in aanet_backbone.layers if isinstance(l, Aggregation)],
                            (0.3, 0.6, 0.8)):
        layer.set_alpha(alpha)

    num_old, num_new = bench.num_classes
    blocks = (len(_keras_pairs(backbone_of(plain_net), "stem", "level")) - 1 - 2) // 6
    plain = authors.ResNet32(num_old, blocks)
    _copy_branch(_keras_pairs(backbone_of(plain_net), "stem", "level"), plain)
    _copy_head(classifier_of(plain_net), plain.fc)
    teacher = authors.ResNet32(num_old, blocks)
    _copy_branch(_keras_pairs(backbone_of(teacher_net), "stem", "level"), teacher)
    _copy_head(classifier_of(teacher_net), teacher.fc)
    b1 = authors.stable_from_plain(teacher, num_new, blocks)
    _copy_branch(_keras_pairs(aanet_backbone, "stem", "stable_level"), b1)
    _copy_head(classifier_of(aanet_net), b1.fc)
    b2 = authors.ResNet32(num_old, blocks)
    _copy_branch(_keras_pairs(aanet_backbone, "plastic_stem", "plastic_level"), b2)
    aanet = authors.AANet(b1, b2)
    with torch.no_grad():
        for alpha, layer in zip(aanet.alphas, [l for l in aanet_backbone.layers
                                               if isinstance(l, Aggregation)]):
            alpha.fill_(float(_numpy(layer.alpha)))
    for module in (plain, teacher, aanet):
        _pad_as_tensorflow(module)

    batches = bench.batches()
    normalize = backbone_of(plain_net).get_layer("normalization")
    (x0, y0), (x1, y1) = batches["phase0"], batches["phase1"]
    t0, t1 = _nchw(normalize(x0)), _nchw(normalize(x1))
    ty0, ty1 = torch.as_tensor(y0).long(), torch.as_tensor(y1).long()

    # Inference first: the training-mode passes below move the BatchNorm statistics.
    ours, theirs = {}, {}
    logits = keras.ops.convert_to_numpy(aanet_net(x1, training=False)["logits"])
    ours["level2_loss"] = float(F.cross_entropy(torch.from_numpy(logits), ty1))
    aanet.eval()
    with torch.no_grad():
        their_logits = aanet(t1)[0].numpy()
    theirs["level2_loss"] = float(F.cross_entropy(torch.from_numpy(their_logits), ty1))
    logits_gap = float(np.max(np.abs(logits - their_logits)))

    ours["phase0_loss"] = float(bench.learners["phase0"].level1_losses(
        tf.constant(x0), tf.constant(y0), training=True)[0])
    plain.train()
    theirs["phase0_loss"] = float(F.cross_entropy(plain(t0)[0], ty0).detach())

    total, terms, _ = aanet_learner.level1_losses(tf.constant(x1), tf.constant(y1),
                                                  training=True)
    ours["level1_loss"] = float(total)
    ours.update({f"level1_{k}": float(v) for k, v in terms.items()})
    aanet.train()
    teacher.eval()
    loss, (ce, lf, mr) = authors.lucir_loss(aanet(t1), teacher(t1)[2], ty1, num_old,
                                            less_forget_weight, margin, top_k)
    loss, ce, lf, mr = (t.detach() for t in (loss, ce, lf, mr))
    theirs.update(level1_loss=float(loss), level1_ce=float(ce), level1_less_forget=float(lf),
                  level1_margin_ranking=float(mr))

    def count(network):
        counts = parameter_counts(network)
        return counts["total"] - counts["statistics"]

    unused_head = authors.parameter_count(b2.fc)
    counts = {"ours": {"plain_phase0": count(plain_net), "aanet_phase1": count(aanet_net)},
              "authors": {"plain_phase0": authors.parameter_count(plain),
                          "aanet_phase1": authors.parameter_count(aanet)},
              "authors_plastic_unused_head": unused_head}
    problems = [f"{name}: ours {ours[name]:.6f}, theirs {theirs[name]:.6f}"
                for name in theirs if not np.isclose(ours[name], theirs[name], rtol=RTOL,
                                                     atol=1e-6)]
    if logits_gap > 1e-3 * max(1.0, float(np.abs(logits).max())):
        problems.append(f"AANet logits differ by up to {logits_gap:.2e}")
    if counts["ours"]["plain_phase0"] != counts["authors"]["plain_phase0"]:
        problems.append(f"phase-0 parameter counts: {counts}")
    if counts["ours"]["aanet_phase1"] + unused_head != counts["authors"]["aanet_phase1"]:
        problems.append(f"AANet parameter counts: {counts}")
    result = {"ours": ours, "authors": theirs, "max_logit_difference": logits_gap,
              "parameter_counts": counts, "rtol": RTOL, "passed": not problems}
    if problems:
        raise AssertionError("The authors' networks given our weights do not compute what "
                             "ours do: " + "; ".join(problems))
    return result
