"""Feature distillation (FitNet hints): hooks capture a student and a teacher layer; an adapter maps one to the other."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from warmstart.heads import get_module


@dataclasses.dataclass
class FeatureHint:
    """Match a student layer's output to a teacher layer's output with an MSE term.

    Attributes:
        student: module path in the student.
        teacher: module path in the teacher.
        weight: weight of the MSE term in the loss.
    """

    student: str
    teacher: str
    weight: float = 1.0


def make_adapter(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """A learned map from student features to the teacher's shape.

    4-D features get a 1x1 convolution (channels) followed by adaptive average pooling to the
    teacher's spatial size when it differs; 2-D features get a linear layer.
    """
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        layers: list[nn.Module] = [nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False)]
        if student_shape[2:] != teacher_shape[2:]:
            layers.append(nn.AdaptiveAvgPool2d(tuple(teacher_shape[2:])))
        return nn.Sequential(*layers)
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1], bias=False)
    raise ValueError(f"cannot map student features {tuple(student_shape)} to teacher features {tuple(teacher_shape)}; "
                     "hint layers must both give (B, C, H, W) or both (B, C)")


class FeatureTaps:
    """Forward hooks that keep the latest output of the hinted layers of a student and its teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, hints: list[FeatureHint]):
        self.hints = hints
        self.student_out: dict[int, torch.Tensor] = {}
        self.teacher_out: dict[int, torch.Tensor] = {}
        self.handles = []
        for i, hint in enumerate(hints):
            self.handles.append(get_module(student, hint.student).register_forward_hook(self._keep(self.student_out, i)))
            self.handles.append(get_module(teacher, hint.teacher).register_forward_hook(self._keep(self.teacher_out, i)))

    @staticmethod
    def _keep(store: dict[int, torch.Tensor], i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            store[i] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def losses(self, adapters: nn.ModuleList) -> dict[str, torch.Tensor]:
        """``{"hint_<i>": weight * mse(adapter(student_feature), teacher_feature)}`` for the last forward pass."""
        terms = {}
        for i, (hint, adapter) in enumerate(zip(self.hints, adapters)):
            mapped = adapter(self.student_out[i].float())
            terms[f"hint_{i}"] = hint.weight * F.mse_loss(mapped, self.teacher_out[i].detach().float())
        return terms

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()
