"""Fine-tuning: swap heads, load pretrained weights, freeze and unfreeze, every transfer strategy, and LoRA."""

from warmstart.finetune.freezing import (LayerGroup, freeze, freeze_batchnorm, freeze_to, frozen_state, layer_groups,
                                         unfreeze)
from warmstart.finetune.loading import LoadReport, load_pretrained, strip_prefixes
from warmstart.finetune.lora import (LoraInfo, adapter_state_dict, add_lora, base_identity, load_adapter, lora_candidates,
                                     lora_info, merge_lora, resolve_targets, save_adapter)
from warmstart.finetune.lr_finder import LRFinderResult, lr_find
from warmstart.finetune.recipes import Candidate, FineTuneResult, default_candidates, fine_tune
from warmstart.finetune.strategies import (STRATEGIES, Full, Gradual, LinearProbe, LoRA, Partial, Strategy,
                                           make_strategy)
from warmstart.finetune.text_models import MINILM, load_text_classifier, load_tokenizer, minilm_path
from warmstart.finetune.trainer import FinetuneTrainer
from warmstart.finetune.transfer import transfer_layers
from warmstart.heads import SwapInfo, find_head, init_head, swap_head

__all__ = [
    "MINILM",
    "STRATEGIES",
    "Candidate",
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
    "Partial",
    "Strategy",
    "SwapInfo",
    "add_lora",
    "adapter_state_dict",
    "base_identity",
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
    "make_strategy",
    "merge_lora",
    "minilm_path",
    "resolve_targets",
    "save_adapter",
    "strip_prefixes",
    "swap_head",
    "transfer_layers",
    "unfreeze",
]
