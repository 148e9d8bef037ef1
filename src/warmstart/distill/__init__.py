"""Knowledge distillation: the exact KD loss, online or cached teachers, soft labels, tiny text students, a recipe."""

from warmstart.distill.cache import AugmentedViews, TeacherCache
from warmstart.distill.hints import FeatureHint, make_adapter
from warmstart.distill.losses import kd_loss, kd_terms
from warmstart.distill.recipe import DistillResult, KDSetting, default_settings, distill
from warmstart.distill.soft_labels import SoftLabelTrainer, soft_label_terms, teacher_probabilities
from warmstart.distill.students import NgramClassifier, ngram_classifier
from warmstart.distill.trainer import DistillTrainer

__all__ = ["AugmentedViews", "DistillResult", "DistillTrainer", "FeatureHint", "KDSetting", "NgramClassifier",
           "SoftLabelTrainer", "TeacherCache", "default_settings", "distill", "kd_loss", "kd_terms", "make_adapter",
           "ngram_classifier", "soft_label_terms", "teacher_probabilities"]
