"""LUCIR (Hou et al., CVPR 2019), the host of the paper's main results (SPEC section 4).

Head: the cosine classifier (`sigma * cos`). Level 1: cross-entropy over all
seen classes, plus against the previous model the less-forget term
`lambda * (1 - cos(f_new, f_old))` with `lambda = lambda_base * sqrt(old / new)`
and the margin ranking of old-class samples against their hardest new
classes. Headline: CNN.
"""

from __future__ import annotations

from aanets_tf.hosts import lucir_losses
from aanets_tf.hosts.host import Host, Mean, Objective, per_example
from aanets_tf.models.network import cosine_head


class LucirObjective(Objective):
    """CE + less-forget + margin ranking (phase 0: CE; the other two are 0)."""
    names = ("ce", "less_forget", "margin_ranking")

    def __init__(self, num_old_classes: int, less_forget_weight: float = 0.0,
                 margin: float = 0.5, top_k: int = 2):
        self.num_old_classes = int(num_old_classes)
        self.less_forget_weight = float(less_forget_weight)
        self.margin = float(margin)
        self.top_k = int(top_k)

    def level1_terms(self, labels, student, teacher):
        head = student.head
        cosines = head.cosine(student.features)
        logits = head.sigma * cosines
        terms = {"ce": per_example(lucir_losses.cross_entropy_per_example(labels, logits))}
        if teacher is not None:
            terms["less_forget"] = per_example(
                lucir_losses.less_forget_per_example(student.features, teacher.features),
                self.less_forget_weight)
            hinge_sum, pairs = lucir_losses.margin_ranking_terms(
                cosines, labels, self.num_old_classes, self.margin, self.top_k)
            # A mean over the (old-class example, hard new class) pairs, not the batch.
            terms["margin_ranking"] = Mean(hinge_sum, pairs)
        return terms, logits


class Lucir(Host):
    name = "lucir"

    def classifier(self, num_old_classes, num_new_classes):
        return cosine_head(num_old_classes, num_new_classes)

    def objective(self, network, teacher, num_old_classes, num_new_classes):
        weight = (lucir_losses.less_forget_weight(self.config.lambda_base, num_old_classes,
                                                  num_new_classes)
                  if num_old_classes else 0.0)
        return LucirObjective(num_old_classes, weight, self.config.margin, self.config.top_k)
