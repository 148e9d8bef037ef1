"""warmstart: pretrain, fine-tune and distill PyTorch networks with one small, exact Trainer."""

from warmstart import data, distill, distributed, finetune, models, pretrain
from warmstart._runtime import seed_everything, select_device
from warmstart.callbacks import EMA, BestCheckpoint, Callback, CSVLogger, EarlyStopping, TensorBoardLogger
from warmstart.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from warmstart.config import OptimizerConfig, SchedulerConfig, TrainerConfig, load_config
from warmstart.errors import (CheckpointError, ConfigError, DataError, NonFiniteLossError, OutDirBusyError,
                              WarmstartError)
from warmstart.heads import HeadInfo, find_head
from warmstart.optim import build_optimizer, build_scheduler
from warmstart.trainer import Trainer, classification_sums, split_batch

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "BestCheckpoint",
    "CSVLogger",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EarlyStopping",
    "HeadInfo",
    "NonFiniteLossError",
    "OutDirBusyError",
    "OptimizerConfig",
    "SchedulerConfig",
    "TensorBoardLogger",
    "Trainer",
    "TrainerConfig",
    "WarmstartError",
    "build_optimizer",
    "build_scheduler",
    "classification_sums",
    "data",
    "distill",
    "distributed",
    "finetune",
    "find_head",
    "load_checkpoint",
    "load_config",
    "load_weights",
    "models",
    "pretrain",
    "save_checkpoint",
    "save_weights",
    "seed_everything",
    "select_device",
    "split_batch",
]
