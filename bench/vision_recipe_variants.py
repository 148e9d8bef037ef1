"""The vision job's data (configs/vision_transfer.yaml, 10 animal shapes per class, Lite0 at 56 px): fine_tune()'s
recipe with one setting changed at a time, beside the job's full fine-tune, training seeds 0-2; validation and test
accuracy (%) as mean +- sd, and the test accuracy per seed. About 12 minutes on 2 cores. ``--threads N`` fixes
torch's thread count (the figures move with it: float sums in another order).

    python bench/vision_recipe_variants.py                       # every variant
    python bench/vision_recipe_variants.py "fe 0" "full (job)"   # some
    python bench/vision_recipe_variants.py --threads 1 "job recipe (ld 0.9, fe 2)" "full (job)"
"""
import dataclasses
import statistics
import sys
import time

import torch

import warmstart as ws
from warmstart.jobs.schema import load_job
from warmstart.jobs.vision import _vision_data, _network
from warmstart.finetune import FinetuneTrainer, fine_tune
from warmstart.config import TrainerConfig

job = load_job("run", "configs/vision_transfer.yaml", [])
data = _vision_data(job)
variants = {
    "job recipe (ld 0.9, fe 2)": {},
    "ld None (lr 3e-3 everywhere)": {"layer_decay": None},
    "fe 0": {"freeze_epochs": 0},
    "ls 0": {"label_smoothing": 0.0},
    "ld None, lr 1e-3": {"layer_decay": None, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}},
    "fe 25 (a probe of 100 steps first: LP-FT)": {"freeze_epochs": 25},
    "fe 60 (a probe of 240 steps first)": {"freeze_epochs": 60},
}
args = sys.argv[1:]
if args[:1] == ["--threads"]:
    torch.set_num_threads(int(args[1]))
    args = args[2:]
pick = args or list(variants) + ["full (job)"]
res = {}
for seed in (0, 1, 2):
    for name in pick:
        model = _network(job, data.num_classes, True, seed)
        lab = data.loader("labelled", job.data.batch_size, seed, train=True)
        val = data.loader("val", job.data.eval_batch_size)
        test = data.loader("test", job.data.eval_batch_size)
        t = time.perf_counter()
        cfg = TrainerConfig(seed=seed, device="cpu", progress=False, checkpoint=False, log_every=25)
        if name == "full (job)":
            tr = FinetuneTrainer(model, method={"name": "full", "backbone_lr_mult": 1.0},
                                 optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
                                 scheduler={"name": "cosine", "warmup_epochs": 1}, config=dataclasses.replace(cfg, max_epochs=25))
            tr.fit(lab, val)
        else:
            kw = {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01}, "layer_decay": 0.9,
                  "label_smoothing": 0.1, **variants[name]}
            fine_tune(model, lab, val, select=False, config=cfg, **kw)
        v, te = ws.evaluate(model, val)["accuracy"], ws.evaluate(model, test)["accuracy"]
        res.setdefault(name, []).append((v, te))
        print(f"seed {seed} {name}: val {100*v:.1f} test {100*te:.1f} ({time.perf_counter()-t:.0f} s)", flush=True)
for name, rows in res.items():
    vs, ts = [100*r[0] for r in rows], [100*r[1] for r in rows]
    print(f"| {name} | {statistics.mean(vs):.1f} ± {statistics.stdev(vs):.1f} | {statistics.mean(ts):.1f} ± {statistics.stdev(ts):.1f} | "
          + " / ".join(f"{t:.1f}" for t in ts) + " |")
