"""Real data: an MNIST-pretrained CNN fine-tuned on 10 UCI digits per class beats the same CNN from scratch."""

import functools
import statistics

import torch
import torch.nn.functional as F

import warmstart as ws
from warmstart.data import InMemoryLoader, build_augmentation, few_shot_splits
from warmstart.finetune import fine_tune
from warmstart.models import small_cnn

EPOCHS = 30


def _accuracy(pretrained, seed: int, weights) -> float:
    target = pretrained["target"]
    train, test = few_shot_splits(target, k=10, seed=seed)
    augment = build_augmentation("digits", fill=target.background, batched=True)
    loader = InMemoryLoader(train, batch_size=32, shuffle=True, seed=seed, transform=augment)
    torch.manual_seed(seed)
    model = small_cnn(width=16)
    if weights is None:  # from scratch: the same loss, optimizer, schedule and epochs as the recipe's two phases
        trainer = ws.Trainer(model, {"name": "adamw", "lr": 3e-3, "weight_decay": 0.01},
                             functools.partial(F.cross_entropy, label_smoothing=0.1), scheduler={"name": "cosine"},
                             max_epochs=EPOCHS + 2, progress=False, seed=seed)
        trainer.fit(loader)
    else:
        model.load_state_dict(weights)
        # one network against one (ensemble=False: the fair control of a single scratch run)
        trainer = fine_tune(model, loader, epochs=EPOCHS, freeze_epochs=2, progress=False, seed=seed,
                            ensemble=False).trainer
    return trainer.evaluate(InMemoryLoader(test, batch_size=500))["accuracy"]


def test_fine_tuning_beats_training_from_scratch_at_10_shots(mnist_pretrained):
    scratch = [_accuracy(mnist_pretrained, seed, None) for seed in range(3)]
    tuned = [_accuracy(mnist_pretrained, seed, mnist_pretrained["state_dict"]) for seed in range(3)]
    assert statistics.mean(tuned) > statistics.mean(scratch) + 0.02, (scratch, tuned)
