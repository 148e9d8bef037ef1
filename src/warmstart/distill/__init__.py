"""Knowledge distillation: the exact KD loss, online or cached teachers, several teachers, feature hints."""

from warmstart.distill.cache import AugmentedViews, TeacherCache
from warmstart.distill.hints import FeatureHint, make_adapter
from warmstart.distill.losses import kd_loss, kd_terms
from warmstart.distill.trainer import DistillTrainer

__all__ = ["AugmentedViews", "DistillTrainer", "FeatureHint", "TeacherCache", "kd_loss", "kd_terms", "make_adapter"]
