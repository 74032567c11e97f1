"""iCaRL (Rebuffi et al., CVPR 2017) as the AANets code runs it.

Head: the cosine classifier LUCIR uses (the AANets code's iCaRL trainer keeps
it). Level 1: cross-entropy over all seen classes plus the KL distillation of
the previous model's old-class probabilities at temperature 2
(`aanets_tf.hosts.icarl_losses`). Headline: NME, iCaRL's own classifier (the
CNN accuracy is reported beside it).
"""

from __future__ import annotations

from aanets_tf.hosts import icarl_losses
from aanets_tf.hosts.host import Host, Objective, per_example
from aanets_tf.models.network import cosine_head


class IcarlObjective(Objective):
    """CE + beta * T^2 * KL(p_old || p_new) on the old classes (phase 0: CE)."""
    names = ("ce", "distillation")

    def __init__(self, temperature: float = icarl_losses.DEFAULT_TEMPERATURE,
                 distillation_weight: float = icarl_losses.DEFAULT_DISTILLATION_WEIGHT):
        self.temperature = float(temperature)
        self.distillation_weight = float(distillation_weight)

    def level1_terms(self, labels, student, teacher):
        logits = student.head(student.features)
        old_logits = None if teacher is None else teacher.head(teacher.features)
        values = icarl_losses.level1_loss_per_example(
            labels, logits, old_logits, self.temperature, self.distillation_weight)
        return {"ce": per_example(values["cross_entropy"]),
                "distillation": per_example(values["distillation"],
                                            self.distillation_weight)}, logits


class Icarl(Host):
    name = "icarl"

    def classifier(self, num_old_classes, num_new_classes):
        return cosine_head(num_old_classes, num_new_classes)

    def objective(self, network, teacher, num_old_classes, num_new_classes):
        return IcarlObjective()
