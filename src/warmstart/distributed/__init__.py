"""Running on several processes under ``torchrun``: process groups, sharded loaders, reductions, and the strategies.

A strategy (:class:`Strategy` in one process, :class:`DDPStrategy`, :class:`FSDPStrategy`) is how the
Trainer runs its model; :func:`build_strategy` gives the one ``TrainerConfig.strategy`` names.
"""

from warmstart.distributed._agreement import check_ranks_agree
from warmstart.distributed._process_group import (ShardSampler, all_reduce_max, all_reduce_sum, any_rank, barrier,
                                                  broadcast_from_main, close_process_group, gather_objects,
                                                  init_distributed, init_process_group_for_sharding, is_distributed,
                                                  is_main_process, launched_by_torchrun, rank, rank_seed, shard_loader,
                                                  world_size)
from warmstart.distributed._strategies import (DDPStrategy, FSDPStrategy, Strategy, build_strategy,
                                               find_last_checkpoint)

__all__ = ["DDPStrategy", "FSDPStrategy", "ShardSampler", "Strategy", "all_reduce_max", "all_reduce_sum", "any_rank",
           "barrier", "broadcast_from_main", "build_strategy", "check_ranks_agree", "close_process_group", "find_last_checkpoint",
           "gather_objects", "init_distributed", "init_process_group_for_sharding", "is_distributed",
           "is_main_process", "launched_by_torchrun", "rank", "rank_seed", "shard_loader", "world_size"]
