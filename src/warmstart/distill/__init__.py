"""Knowledge distillation: the exact KD loss, online or cached teachers, several teachers, feature hints, a recipe."""

from warmstart.distill.cache import AugmentedViews, TeacherCache
from warmstart.distill.hints import FeatureHint, make_adapter
from warmstart.distill.losses import kd_loss, kd_terms
from warmstart.distill.recipe import DistillResult, KDSetting, default_settings, distill
from warmstart.distill.trainer import DistillTrainer

__all__ = ["AugmentedViews", "DistillResult", "DistillTrainer", "FeatureHint", "KDSetting", "TeacherCache",
           "default_settings", "distill", "kd_loss", "kd_terms", "make_adapter"]
