"""warmstart: pretrain, fine-tune and distill PyTorch networks with one small, exact Trainer.

Names are imported on first use (``ws.Trainer`` imports the trainer), so ``import warmstart`` and the
``warmstart --help`` command start without loading torch or torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warmstart._lazy import lazy_namespace

__version__ = "0.1.0"

_EXPORTS = {
    **{name: "warmstart.callbacks" for name in ("EMA", "BestCheckpoint", "CSVLogger", "Callback", "EarlyStopping",
                                                "TensorBoardLogger")},
    **{name: "warmstart.errors" for name in ("CheckpointError", "ConfigError", "DataError", "NonFiniteLossError",
                                             "OutDirBusyError", "RunExistsError", "WarmstartError")},
    **{name: "warmstart.checkpoint" for name in ("load_checkpoint", "load_weights", "save_checkpoint", "save_weights")},
    **{name: "warmstart.config" for name in ("ModelConfig", "OptimizerConfig", "SchedulerConfig", "TrainerConfig",
                                              "load_config")},
    **{name: "warmstart.trainer" for name in ("Trainer", "classification_sums", "split_batch")},
    "evaluate": "warmstart.evaluation",
    **{name: "warmstart.heads" for name in ("HeadInfo", "find_head")},
    **{name: "warmstart.optim" for name in ("build_optimizer", "build_scheduler", "check_settings")},
    **{name: "warmstart._runtime" for name in ("seed_everything", "select_device")},
    **{name: f"warmstart.{name}" for name in ("compress", "data", "distill", "distributed", "finetune", "models",
                                              "pretrain")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from warmstart import compress, data, distill, distributed, finetune, models, pretrain
    from warmstart._runtime import seed_everything, select_device
    from warmstart.callbacks import EMA, BestCheckpoint, Callback, CSVLogger, EarlyStopping, TensorBoardLogger
    from warmstart.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
    from warmstart.config import ModelConfig, OptimizerConfig, SchedulerConfig, TrainerConfig, load_config
    from warmstart.errors import (CheckpointError, ConfigError, DataError, NonFiniteLossError, OutDirBusyError,
                                  RunExistsError, WarmstartError)
    from warmstart.evaluation import evaluate
    from warmstart.heads import HeadInfo, find_head
    from warmstart.optim import build_optimizer, build_scheduler, check_settings
    from warmstart.trainer import Trainer, classification_sums, split_batch
