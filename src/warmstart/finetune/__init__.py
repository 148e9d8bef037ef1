"""Fine-tuning: swap heads, load pretrained weights, freeze and unfreeze, and every transfer strategy."""

from warmstart.finetune.freezing import (LayerGroup, freeze, freeze_batchnorm, freeze_to, frozen_state, layer_groups,
                                         unfreeze)
from warmstart.finetune.loading import LoadReport, load_pretrained, strip_prefixes
from warmstart.finetune.lr_finder import LRFinderResult, lr_find
from warmstart.finetune.recipes import Candidate, FineTuneResult, default_candidates, fine_tune
from warmstart.finetune.strategies import STRATEGIES, Full, Gradual, LinearProbe, Partial, Strategy, make_strategy
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.finetune.transfer import transfer_layers
from warmstart.heads import SwapInfo, find_head, init_head, swap_head

__all__ = [
    "STRATEGIES",
    "Candidate",
    "FineTuneResult",
    "FinetuneTrainer",
    "Full",
    "Gradual",
    "LRFinderResult",
    "LayerGroup",
    "LinearProbe",
    "LoadReport",
    "Partial",
    "Strategy",
    "SwapInfo",
    "find_head",
    "default_candidates",
    "fine_tune",
    "freeze",
    "freeze_batchnorm",
    "freeze_to",
    "frozen_state",
    "init_head",
    "layer_groups",
    "load_pretrained",
    "lr_find",
    "make_strategy",
    "strip_prefixes",
    "swap_head",
    "transfer_layers",
    "unfreeze",
]
