"""Data split, transforms, model, loss/optimizer and the training loop.

v2 fixes the two bugs of v1 (marked FIX below), the "critical fixes" of
seed 004:
  1. train and validation are separate dataset instances over the same index
     split, so validation images are never augmented;
  2. GradScaler unscales the gradients before they are clipped.
The training loop also measures what the diagnostics need: gradient norms
(unscaled, before clipping) and the relative weight change per epoch.

v3: under torchrun each process sees its own shard of the data; the loss,
accuracy and image counts of an epoch are summed over all processes, so every
process reports (and rank 0 writes) the numbers of the whole epoch.
"""
from __future__ import annotations

import time
import weakref

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch.utils.data import Subset, random_split
from tqdm import tqdm

from scripts.data import CifarTensors, TensorImageDataset

# The usual per-channel statistics of CIFAR-100's training images.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SPLIT_SEED = 0  # the validation split is the same for every training seed


def load_transforms(split: str, magnitude: int) -> T.Compose:
    """'train': crop, flip and RandAugment; anything else: only scaling and normalisation."""
    to_float = [T.ToDtype(torch.float32, scale=True), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    if split != "train":
        return T.Compose(to_float)
    return T.Compose([
        T.RandomCrop(32, padding=4, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
        T.RandAugment(num_ops=2, magnitude=magnitude),
        *to_float,
    ])


def build_datasets(data: CifarTensors, val_fraction: float, magnitude: int):
    """Train / validation / test datasets; validation is carved from the training images."""
    # FIX (v1 split one instance that had the training transform): two
    # instances over the same tensors, one per transform, and the same index
    # split applied to each. scripts/check_transforms.py verifies it.
    train_full = TensorImageDataset(data.train_images, data.train_labels, load_transforms("train", magnitude))
    val_full = TensorImageDataset(data.train_images, data.train_labels, load_transforms("test", magnitude))
    num_val = round(len(train_full) * val_fraction)
    train_idx, val_idx = random_split(range(len(train_full)), [len(train_full) - num_val, num_val],
                                      generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_ds, val_ds = Subset(train_full, train_idx.indices), Subset(val_full, val_idx.indices)
    test_ds = TensorImageDataset(data.test_images, data.test_labels, load_transforms("test", magnitude))
    return train_ds, val_ds, test_ds


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs: a 3x3 stem with stride 1 and no max-pool.

    ImageNet's 7x7/2 stem plus max-pool would shrink a 32x32 image to 8x8
    before the first block and cost ~10 points of accuracy. At width 64 and 100
    classes it has 11,220,132 parameters; smaller widths are for fast tests.
    """

    def __init__(self, num_classes: int = 100, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, channels = [], width
        for multiplier, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            layers += [BasicBlock(channels, width * multiplier, stride), BasicBlock(width * multiplier, width * multiplier, 1)]
            channels = width * multiplier
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


SCHEDULERS = ("cosine", "onecycle", "plateau")


def define_loss_and_optimizer(model, lr: float, momentum: float, weight_decay: float, label_smoothing: float, patience: int,
                              scheduler_name: str, num_epochs: int, steps_per_epoch: int):
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if scheduler_name == "cosine":
        # Stepped once per epoch: from lr down to ~0 at the last epoch, with no
        # early cut that a noisy validation loss could trigger.
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_epochs)
    elif scheduler_name == "onecycle":
        # Stepped once per batch: warm up to lr over the first 30% of the steps, then anneal.
        # cycle_momentum=False: by default OneCycle also cycles the momentum between 0.85 and 0.95,
        # which would silently override --momentum; here --momentum holds for every scheduler.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=num_epochs, steps_per_epoch=steps_per_epoch,
                                                        cycle_momentum=False)
    else:
        # v1's choice, stepped once per epoch with the validation loss; divides
        # the LR by 10 after `patience` epochs without improvement, which can
        # happen very early (seed 004: "learning rate reduced too early").
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=patience)
    return criterion, optimizer, scheduler


def train_one_epoch(model, loader, criterion, optimizer, scaler, device, use_autocast: bool, grad_clip: float, desc: str = "train",
                    batch_scheduler=None) -> dict:
    """One pass over `loader`; returns loss, accuracy and what the optimizer saw.

    Per-batch values stay on the device and are read once at the end of the
    epoch, so the GPU is not stalled by a .item() after every step.
    """
    model.train()
    start_params = [p.detach().clone() for p in model.parameters()]
    split = _decay_split_for(optimizer)
    learning_rate = optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, grad_norms = 0, []
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not _is_main()):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_autocast):
            logits = model(images)
            loss = criterion(logits, labels)
        scaler.scale(loss).backward()
        # FIX (v1 clipped here, on gradients still multiplied by the loss scale
        # of ~65536): unscale first, so that clipping and the logged norm see the
        # true gradients. scaler.step() knows they are unscaled and does not
        # divide again. The norm returned is measured before clipping.
        scaler.unscale_(optimizer)
        grad_norms.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip))
        decay = split.decay_before_step(optimizer)
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        # GradScaler skips a step whose gradients overflowed and then lowers its scale: no update, no decay.
        if not (scaler.is_enabled() and scaler.get_scale() < scale_before):
            split.after_step(optimizer, decay)
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    loss_sum, correct, seen = _sum_over_ranks(loss_sum, correct, seen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {**_epoch_summary(loss_sum, correct, seen, len(grad_norms)),
            **_grad_norm_stats(grad_norms),
            "weight_update_norm": _relative_change(start_params, [p.detach() for p in model.parameters()]),
            **split.epoch_summary(model, start_params),
            # float16's loss scale after the epoch (None without GradScaler): it halves on every overflow, so a
            # scale that fell from 65536 to a few hundred means the gradients overflowed again and again.
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else None,
            "learning_rate": learning_rate, "seconds": seconds}


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _sum_over_ranks(loss_sum, correct, seen: int):
    """Each process saw its own shard: the epoch's totals are the sums over all processes.

    The gradient norms need no such step: DDP already averaged the gradients,
    so every process measured the norm of the same global-batch gradient.
    """
    if not dist.is_initialized():
        return loss_sum, correct, seen
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
    dist.all_reduce(totals)
    return totals[0], totals[1].long(), int(totals[2].item())


class DecaySplit:
    """Splits the change of the weights into the part weight decay made and the part the gradient made.

    SGD adds weight_decay x w to the gradient, and momentum carries both along, so the change of
    the weights (weight_update_norm) mixes the two: at lr 0.1, decay 5e-4 and momentum 0.9 decay
    alone moves the weights by about a percent per epoch, so a run whose gradients are zero still
    shows a healthy-looking weight_update_norm. The update is linear in (gradient + decay), so the
    decay's share is computed exactly by running SGD's momentum recursion on the decay term alone
    (a second momentum buffer per parameter), and the gradient's share is the rest.
    """

    def __init__(self):
        self.buffers: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> momentum buffer of its decay term
        self.moved: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> this epoch's change made by decay

    @torch.no_grad()
    def decay_before_step(self, optimizer) -> list:
        """The decay term weight_decay x w of every decayed parameter, from the weights before the step."""
        return [(p, group, p.detach() * group["weight_decay"]) for group in optimizer.param_groups
                if group.get("weight_decay", 0) > 0 for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def after_step(self, optimizer, decay: list) -> None:
        for p, group, term in decay:
            momentum = group.get("momentum", 0.0)
            step = term
            if momentum > 0:
                buffer = self.buffers.get(p)
                buffer = term.clone() if buffer is None else buffer.mul_(momentum).add_(term)
                self.buffers[p] = buffer
                step = term + momentum * buffer if group.get("nesterov", False) else buffer
            moved = self.moved.get(p)
            self.moved[p] = -group["lr"] * step if moved is None else moved.sub_(group["lr"] * step)

    @torch.no_grad()
    def epoch_summary(self, model, start_params: list) -> dict:
        """{decay_update_norm, grad_update_norm}: each part's change relative to the weights at the start
        of the epoch, as weight_update_norm is; then reset for the next epoch (the buffers carry over)."""
        start_norm = torch.sqrt(sum((b.float() ** 2).sum() for b in start_params))
        decay_sq = torch.zeros((), device=start_norm.device)
        grad_sq = torch.zeros((), device=start_norm.device)
        for p, before in zip(model.parameters(), start_params):
            total = p.detach().float() - before.float()
            by_decay = self.moved.get(p)
            by_decay = torch.zeros_like(total) if by_decay is None else by_decay.float()
            decay_sq += (by_decay ** 2).sum()
            grad_sq += ((total - by_decay) ** 2).sum()
        self.moved = {}
        return {"decay_update_norm": (decay_sq.sqrt() / start_norm).item(),
                "grad_update_norm": (grad_sq.sqrt() / start_norm).item()}


_DECAY_SPLITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _decay_split_for(optimizer) -> DecaySplit:
    """One DecaySplit per optimizer, kept across epochs (its momentum buffers carry over as SGD's do)."""
    if optimizer not in _DECAY_SPLITS:
        _DECAY_SPLITS[optimizer] = DecaySplit()
    return _DECAY_SPLITS[optimizer]


def decay_split_state(optimizer, model) -> list:
    """The decay term's momentum buffers, in model.parameters() order (None where there is none), for a
    checkpoint: without them a resumed run would split its first steps' updates differently."""
    buffers = _decay_split_for(optimizer).buffers
    return [buffers.get(p) for p in model.parameters()]


def load_decay_split_state(optimizer, model, state: list) -> None:
    split = _decay_split_for(optimizer)
    split.buffers = {p: b.to(p.device) for p, b in zip(model.parameters(), state) if b is not None}


def _epoch_summary(loss_sum, correct, seen: int, num_batches: int) -> dict:
    return {"loss": loss_sum.item() / max(seen, 1), "accuracy": 100.0 * correct.item() / max(seen, 1), "num_batches": num_batches,
            "images": seen}


def _grad_norm_stats(grad_norms: list[torch.Tensor]) -> dict:
    """Mean, min and max of the per-step gradient norms.

    Steps whose gradients overflowed (inf/NaN: GradScaler skips them and lowers
    its scale, which is normal in the first steps of fp16 training) are left
    out; None when no step had finite gradients.
    """
    norms = torch.stack(grad_norms).float().cpu() if grad_norms else torch.empty(0)
    norms = norms[torch.isfinite(norms)]
    if len(norms) == 0:
        return {"mean_grad_norm": None, "min_grad_norm": None, "max_grad_norm": None}
    return {"mean_grad_norm": norms.mean().item(), "min_grad_norm": norms.min().item(), "max_grad_norm": norms.max().item()}


def _relative_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """||theta_after - theta_before|| / ||theta_before|| over all parameters."""
    diff = torch.sqrt(sum(((a.float() - b.float()) ** 2).sum() for a, b in zip(after, before)))
    norm = torch.sqrt(sum((b.float() ** 2).sum() for b in before))
    return (diff / norm).item()


@torch.no_grad()
def evaluate(model, loader, criterion, device, use_autocast: bool, desc: str = "eval") -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = num_batches = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not _is_main()):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_autocast):
            logits = model(images)
            loss = criterion(logits, labels)
        loss_sum += loss.float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        num_batches += 1
    loss_sum, correct, seen = _sum_over_ranks(loss_sum, correct, seen)
    return _epoch_summary(loss_sum, correct, seen, num_batches)
