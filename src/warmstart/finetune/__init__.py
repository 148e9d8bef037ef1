"""Fine-tuning: swap heads, load pretrained weights, freeze and unfreeze, every fine-tuning method, and LoRA."""

import warnings

from warmstart.finetune.ensemble import Ensemble
from warmstart.finetune.freezing import (LayerGroup, freeze, freeze_batchnorm, freeze_to, frozen_state, layer_groups,
                                         unfreeze)
from warmstart.finetune.loading import LoadReport, load_pretrained, strip_prefixes
from warmstart.finetune.lora import (LoraInfo, adapter_state_dict, add_lora, base_identity, check_lora_options,
                                     load_adapter, lora_candidates, lora_info, merge_lora, resolve_targets, save_adapter)
from warmstart.finetune.lr_finder import LRFinderResult, lr_find
from warmstart.finetune.methods import METHODS, Full, Gradual, LinearProbe, LoRA, Method, Partial, build_method
from warmstart.finetune.recipes import Candidate, FineTuneResult, default_candidates, fine_tune
from warmstart.finetune.text_models import MINILM, load_text_classifier, load_tokenizer, minilm_path, use_mean_pooling
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.finetune.transfer import transfer_layers
from warmstart.heads import SwapInfo, find_head, init_head, swap_head

__all__ = [
    "METHODS",
    "MINILM",
    "Candidate",
    "Ensemble",
    "FineTuneResult",
    "FinetuneTrainer",
    "Full",
    "Gradual",
    "LRFinderResult",
    "LayerGroup",
    "LinearProbe",
    "LoRA",
    "LoadReport",
    "LoraInfo",
    "Method",
    "Partial",
    "SwapInfo",
    "add_lora",
    "adapter_state_dict",
    "base_identity",
    "build_method",
    "check_lora_options",
    "find_head",
    "default_candidates",
    "fine_tune",
    "freeze",
    "freeze_batchnorm",
    "freeze_to",
    "frozen_state",
    "init_head",
    "layer_groups",
    "load_adapter",
    "load_pretrained",
    "load_text_classifier",
    "load_tokenizer",
    "lora_candidates",
    "lora_info",
    "lr_find",
    "merge_lora",
    "minilm_path",
    "resolve_targets",
    "save_adapter",
    "strip_prefixes",
    "swap_head",
    "transfer_layers",
    "unfreeze",
    "use_mean_pooling",
]

# the names of the fine-tuning methods before they took the word "method" (``strategy`` is the Trainer's parallelism)
_DEPRECATED = {"Strategy": "Method", "STRATEGIES": "METHODS", "make_strategy": "build_method"}


def __getattr__(name: str) -> object:
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(f"warmstart.finetune.{name} is deprecated: use warmstart.finetune.{new} (the fine-tuning "
                      "'strategy' is now the 'method'; 'strategy' names the Trainer's parallelism)", DeprecationWarning,
                      stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
