"""The training loop with nothing but training in it, and model selection by validation.

fashionmnist/v10-step2's loop carries guards, progress bars, per-batch records and
checks: that is what makes it debuggable, and what makes the essentials hard to
see. Here are the essentials (docs/questions.md, "Training"):

- `train_one_epoch`: zero_grad, forward, loss, backward, step. Five lines.
- `evaluate`: eval mode, no gradients, loss and accuracy.
- `fit`: after every epoch, score the validation split; keep a copy of the weights
  of the best epoch; stop when validation has not improved for `patience` epochs;
  put the best weights back. The test set is not touched here.
- `explain_loss_gap`: why the validation loss can be *below* the training loss
  (dropout, and the training loss being an average over an epoch of changing weights).

    python docs/advanced/optimizer.py                   # about 30 s on one CPU thread
    python docs/advanced/optimizer.py --epochs 3 --train-size 2000
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location only)


# ---------------------------------------------------------------------------
# The loop, without reporting
# ---------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer) -> float:
    """One pass over the training data; returns the mean loss of its batches."""
    model.train()
    total, seen = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(labels), seen + len(labels)
    return total / seen


@torch.no_grad()
def evaluate(model, loader, train_mode: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy). Eval mode unless `train_mode` (dropout active: only to explain a gap)."""
    model.train(train_mode)
    total, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        total += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return total / seen, correct / seen


def fit(model, train_loader, val_loader, optimizer, epochs: int, patience: int, after_epoch=None) -> dict:
    """Train; after each epoch score validation; keep the best weights; stop early; restore the best.

    Validation picks the epoch because it is data the weights were not fitted on: the
    training loss keeps falling while the model memorises, validation turns when it
    stops generalising. The test set must not pick anything, or it stops being a fair
    estimate of new data. `after_epoch(epoch, train_loss)`, if given, runs after each epoch's
    training, before validation (this file uses it once, to explain the loss gap).
    """
    best = {"epoch": 0, "val_accuracy": -1.0, "state": None}
    history = []
    for epoch in range(1, epochs + 1):
        train_loss = train_one_epoch(model, train_loader, optimizer)
        if after_epoch is not None:
            after_epoch(epoch, train_loss)
        val_loss, val_accuracy = evaluate(model, val_loader)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "val_accuracy": val_accuracy})
        if val_accuracy > best["val_accuracy"]:
            best = {"epoch": epoch, "val_accuracy": val_accuracy, "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= patience:
            break
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"], "history": history,
            "stopped_after": len(history)}


# ---------------------------------------------------------------------------
# Why validation loss can be below training loss
# ---------------------------------------------------------------------------
def explain_loss_gap(model, train_loader, val_loader, epoch_mean_train_loss: float) -> dict:
    """Decompose the gap after an epoch into its two causes:
    1. the reported training loss is the mean over the epoch, most of it measured with the
       worse weights of earlier steps; the validation loss uses the weights at its end;
    2. dropout is on while training and off while evaluating.
    Measured at the same weights: the training split with dropout on, the training split
    with dropout off, the validation split (dropout off)."""
    torch.manual_seed(0)  # dropout masks of the train-mode pass
    train_dropout_on, _ = evaluate(model, train_loader, train_mode=True)
    train_dropout_off, _ = evaluate(model, train_loader)
    val_loss, _ = evaluate(model, val_loader)
    return {"epoch_mean_train_loss": epoch_mean_train_loss, "train_loss_dropout_on": train_dropout_on,
            "train_loss_dropout_off": train_dropout_off, "val_loss": val_loss}


# ---------------------------------------------------------------------------
def small_cnn(dropout: float) -> nn.Module:
    """Two conv blocks and a dropout-regularised classifier (no BatchNorm, so eval mode only switches dropout)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(128, 10))


def load_splits(data_dir, train_size: int, val_size: int, test_size: int, seed: int):
    """Train and validation from the training file (one fixed permutation, cut once: no overlap),
    test from the test file."""
    from torchvision.datasets import FashionMNIST

    from shared.data import fashion_mnist_root

    root = fashion_mnist_root(data_dir)
    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    order = torch.randperm(len(train.targets), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:val_size + train_size]

    def as_set(data, targets, idx):
        return TensorDataset(data[idx].unsqueeze(1).float().div(255.0), targets[idx])

    return (as_set(train.data, train.targets, train_idx), as_set(train.data, train.targets, val_idx),
            as_set(test.data, test.targets, torch.arange(min(test_size, len(test.targets)))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--train-size", type=int, default=10000, help="training images")
    p.add_argument("--val-size", type=int, default=2000, help="validation images (from the training file)")
    p.add_argument("--test-size", type=int, default=2000, help="test images (from the test file), used once")
    p.add_argument("--epochs", type=int, default=8, help="most epochs")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better "
                   "validation accuracy")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout before both linear layers")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the init and the batch order")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if min(args.train_size, args.val_size, args.test_size, args.epochs, args.patience, args.batch_size,
           args.threads) < 1 or not args.lr > 0 or not 0 <= args.dropout < 1:
        p.error("sizes, --epochs, --patience, --batch-size, --threads must be >= 1, --lr > 0, 0 <= --dropout < 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from shared.data import DataNotFoundError

    try:
        train_set, val_set, test_set = load_splits(args.data_dir, args.train_size, args.val_size, args.test_size,
                                                   args.seed)
    except DataNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    torch.manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
    val_loader, test_loader = DataLoader(val_set, batch_size=1000), DataLoader(test_set, batch_size=1000)
    model = small_cnn(args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    gaps = []

    def look_at_the_gap(epoch, train_loss):  # after epoch 1, when the gap is widest
        if epoch == 1:
            gaps.append(explain_loss_gap(model, train_loader, val_loader, train_loss))

    result = fit(model, train_loader, val_loader, optimizer, args.epochs, args.patience, look_at_the_gap)
    for record in result["history"]:
        print(f"epoch {record['epoch']:>3}: train loss {record['train_loss']:.4f}  val loss "
              f"{record['val_loss']:.4f}  val accuracy {record['val_accuracy']:.2%}"
              + ("  <- best" if record["epoch"] == result["best_epoch"] else ""))
    gap = gaps[0]
    print(f"\nThe loss gap after epoch 1 (dropout {args.dropout}):")
    print(f"  training loss as reported (mean over the epoch, dropout on) {gap['epoch_mean_train_loss']:.4f}")
    print(f"  training split at the end-of-epoch weights, dropout on      {gap['train_loss_dropout_on']:.4f}")
    print(f"  training split at the end-of-epoch weights, dropout off     {gap['train_loss_dropout_off']:.4f}")
    print(f"  validation split, dropout off                              {gap['val_loss']:.4f}")
    print(f"  Like with like (the last two lines), training minus validation is "
          f"{gap['train_loss_dropout_off'] - gap['val_loss']:+.4f} instead of "
          f"{gap['epoch_mean_train_loss'] - gap['val_loss']:+.4f}.\n")
    restored_val_loss, restored_val_accuracy = evaluate(model, val_loader)
    test_loss, test_accuracy = evaluate(model, test_loader)  # once, at the end, with the chosen weights
    print(f"Best epoch by validation accuracy: {result['best_epoch']} of {result['stopped_after']} "
          f"({result['best_val_accuracy']:.2%}); its weights are back in the model (validation accuracy now "
          f"{restored_val_accuracy:.2%}); test accuracy, measured once: {test_accuracy:.2%}")
    return {"loss_gap": gap, **result, "restored_val_accuracy": restored_val_accuracy,
            "test_accuracy": test_accuracy, "test_loss": test_loss}

if __name__ == "__main__":
    main()
