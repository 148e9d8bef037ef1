"""Partial layer transfer: copy the first layers' weights from one model into another."""

from __future__ import annotations

from torch import nn

from warmstart.errors import ConfigError
from warmstart.finetune.freezing import freeze_batchnorm, layer_groups


def transfer_layers(source: nn.Module, target: nn.Module, n: int = 1, freeze: bool = False) -> list[str]:
    """Copy the weights of the first ``n`` layer groups of ``source`` into ``target`` (Keras-style reuse).

    Both models must have the same first ``n`` groups (names and shapes); the rest of ``target``
    keeps its own initialisation. With ``freeze``, the copied parameters stop training.

    Args:
        source: the pretrained model.
        target: the new model, changed in place.
        n: layer groups to copy, from the input side (see :func:`layer_groups`).
        freeze: set ``requires_grad=False`` on the copied parameters and keep their BatchNorm
            layers in eval mode (running statistics unchanged).

    Returns:
        The names of the copied tensors.

    Raises:
        ConfigError: the groups differ in names or shapes, or ``n`` exceeds the groups.

    Examples:
        >>> from warmstart.models import small_cnn
        >>> copied = transfer_layers(small_cnn(width=4), small_cnn(num_classes=3, width=4), n=1)
        >>> copied[0]
        'block1.0.weight'
    """
    source_groups, target_groups = layer_groups(source), layer_groups(target)
    if not 0 < n <= min(len(source_groups), len(target_groups)):
        raise ConfigError(f"cannot transfer {n} layer groups: the models have {len(source_groups)} and "
                          f"{len(target_groups)}")
    copied = []
    for src, dst in zip(source_groups[:n], target_groups[:n]):
        if src.name != dst.name:
            raise ConfigError(f"layer group {src.name!r} of the source faces {dst.name!r} in the target; "
                              "transfer only layers the two models share")
        for src_module, dst_module in zip(src.modules, dst.modules):
            src_state, dst_state = src_module.state_dict(), dst_module.state_dict()
            wrong = [f"{k}: {tuple(v.shape)} vs {tuple(dst_state[k].shape)}" for k, v in src_state.items()
                     if k not in dst_state or v.shape != dst_state[k].shape]
            if wrong:
                raise ConfigError(f"layer group {src.name!r} differs between the models: {'; '.join(wrong[:5])}")
            dst_module.load_state_dict(src_state)
            copied += [f"{src.name}.{k}" for k in src_state]
            if freeze:
                for param in dst_module.parameters():
                    param.requires_grad_(False)
                for sub in dst_module.modules():  # running statistics stay as transferred, through model.train()
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        freeze_batchnorm(sub)
    return copied
