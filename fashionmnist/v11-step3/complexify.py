"""Fashion-MNIST v11-step3: "complexify only one at a time" (the recipe, step 3).

v11 replaced v10-step2's MyNN by a small ResNet. This script walks from the one
to the other one change at a time, every model trained with v11's own recipe
(train.py's data, loss, optimizer, schedule, training step and epochs; Adam 3e-4,
cosine, no weight decay, fp32) from the same seed and in the same batch order,
so that each row differs from the one above it by the change it names:

    1 mynn             v10-step2's MyNN as it was (dropout 0.4), trained with v11's recipe
    2 mynn-no-dropout  the same without dropout: step 3 removes regularisation
    3 plain            the ResNet's layout (stem + 3 stages of two 3x3-conv pairs, 32/64/128
                       channels, stride 2 between stages, global mean pool, FC), but no
                       BatchNorm and no shortcuts: 13 convolutions in a row
    4 plain-bn         + BatchNorm after every convolution
    5 resnet           + residual shortcuts: train.ResNet, exactly v11's model

Step 2 -> 3 is the one step that is not a single change: the whole layout changes
(13 convolutions instead of 2, strided convolutions instead of max-pooling, a mean
pool instead of three FC layers) and BatchNorm, which MyNN has, goes with it. Read
it with row 4: 2 -> 4 is the new layout with BatchNorm held, 3 -> 4 is what
BatchNorm does in a deep plain net. Without BatchNorm a convolution gets back its
bias (BatchNorm's shift is what replaces it in rows 4 and 5).

Each row reports: parameters; the final training loss (the mean over the last
epoch's batches, in training mode, as train.py's history.jsonl records it: with
dropout on in row 1); the training accuracy in eval mode on the whole
un-augmented training split (step 3's question: can the model fit its data?); the
validation accuracy; and the seconds spent training. The test set is not used: this
is a comparison to choose by, so it is made on validation.

    python complexify.py                  # all five rows, train.py's epochs, on the real Fashion-MNIST
    python complexify.py --quick          # a few hundred images, 1 epoch: every code path in seconds
    python complexify.py --only plain plain-bn resnet
    python complexify.py --help

Outputs (a new dated folder under outputs/complexify/, its latest the newest; or exactly --out): complexify.jsonl
(one line per model, appended as it finishes, so an interrupted run keeps its
rows), complexify.md (the table as printed, the one FAZIT.md quotes) and
results.json. One seed per row: differences below a few tenths of a point in
validation accuracy need more seeds (--seed) before they mean anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

VERSION_DIR = Path(__file__).resolve().parent
REPO_ROOT = VERSION_DIR.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # for shared/ (data location, run folders)

import train  # noqa: E402  this version's train.py: its data, recipe, training step and ResNet
from shared.data import DataNotFoundError  # noqa: E402
from shared.runs import RunFolderError, existing_dir, make_run_dir, stop_cleanly, write_text  # noqa: E402

# ---------------------------------------------------------------------------
# Configuration: the recipe is train.py's; only what the ladder adds is here.
# ---------------------------------------------------------------------------
NUM_CLASSES = train.NUM_CLASSES
DROPOUT = 0.4  # MyNN's dropout in v10-step2 (row 1); row 2 sets it to 0
CHANNELS = train.CHANNELS  # the plain nets use the ResNet's widths: 32, 64, 128
JSONL_FILE = "complexify.jsonl"
TABLE_FILE = "complexify.md"


# ---------------------------------------------------------------------------
# Models. MyNN is copied from fashionmnist/v10-step2/train.py unchanged: a version is
# self-contained and imports nothing from another version's folder.
# ---------------------------------------------------------------------------
class MyNN(nn.Module):
    """Two conv blocks and three FC layers, ~430K parameters.

    Input 1x28x28 -> Conv 1->32 (+ReLU, BN, MaxPool) -> Conv 32->64 (+ReLU, BN, MaxPool)
    -> Flatten 64x7x7=3136 -> FC 128 (+ReLU, Dropout) -> FC 64 (+ReLU, Dropout) -> FC 10 (logits).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = DROPOUT):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 32, 3, padding="same"), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 3, padding="same"), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(64, num_classes),
        )
        self._initialize_weights()
        # channels_last lets MaxPool and BatchNorm vectorise over channels: ~1.5x faster
        # training on a CPU, and the layout GPU convolutions prefer.
        self.to(memory_format=torch.channels_last)

    def _initialize_weights(self) -> None:
        """Init well: He/Kaiming for layers followed by ReLU, a tiny last layer, zero biases.

        The last layer's std 0.01 makes all logits start near 0, so the model
        starts out maximally unsure (loss = ln 10) instead of confidently wrong.
        Zero biases: the classes are balanced, so no class deserves a head start.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        last = self.classifier[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv2(self.conv1(x)))


class PlainBlock(nn.Module):
    """train.BasicBlock without its shortcut: two 3x3 convolutions, each followed by ReLU,
    with BatchNorm between (Conv-BN-ReLU, as in BasicBlock) or without it (Conv-ReLU, and the
    convolution keeps its bias, the shift BatchNorm would otherwise provide)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)))  # no "+ x": nothing carries the gradient past the block


class PlainNet(nn.Module):
    """train.ResNet's layout without the shortcuts (and, with batchnorm=False, without BatchNorm):
    stem Conv 1->32 -> 2 blocks at 32 (28x28) -> 2 at 64, the first with stride 2 (14x14) ->
    2 at 128, stride 2 (7x7) -> mean over height and width -> FC 10. 13 convolutions in a row.
    Initialised as train.ResNet: Kaiming for the convolutions, BatchNorm as identity, zero conv
    biases, a tiny last layer with zero bias (loss = ln 10 at init)."""

    def __init__(self, batchnorm: bool = True, num_classes: int = NUM_CLASSES, channels: int = CHANNELS):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=not batchnorm),
                                  nn.BatchNorm2d(c) if batchnorm else nn.Identity(), nn.ReLU())
        self.layer1 = nn.Sequential(PlainBlock(c, c, batchnorm=batchnorm), PlainBlock(c, c, batchnorm=batchnorm))
        self.layer2 = nn.Sequential(PlainBlock(c, 2 * c, stride=2, batchnorm=batchnorm),
                                    PlainBlock(2 * c, 2 * c, batchnorm=batchnorm))
        self.layer3 = nn.Sequential(PlainBlock(2 * c, 4 * c, stride=2, batchnorm=batchnorm),
                                    PlainBlock(4 * c, 4 * c, batchnorm=batchnorm))
        self.fc = nn.Linear(4 * c, num_classes)
        self._initialize_weights()
        self.to(memory_format=torch.channels_last)  # as train.ResNet, so the seconds compare

    def _initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain mean, as train.ResNet: AdaptiveAvgPool2d's CUDA backward is not deterministic.
        return self.fc(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean(dim=(2, 3)))


# The ladder, in order: name -> (what this row changes, how to build its model).
ROWS = {
    "mynn": ("MyNN, dropout 0.4 (v10-step2's model, v11's recipe)", lambda: MyNN(dropout=DROPOUT)),
    "mynn-no-dropout": ("MyNN without dropout", lambda: MyNN(dropout=0.0)),
    "plain": ("ResNet layout, no BatchNorm, no shortcuts", lambda: PlainNet(batchnorm=False)),
    "plain-bn": ("+ BatchNorm", lambda: PlainNet(batchnorm=True)),
    "resnet": ("+ residual shortcuts = v11's ResNet", lambda: train.ResNet(channels=CHANNELS)),
}


# ---------------------------------------------------------------------------
# One row: one model trained with the version's own recipe
# ---------------------------------------------------------------------------
def train_row(name: str, recipe: argparse.Namespace, train_set, val_set, device) -> dict:
    """Seed, build, train for recipe.epochs with train.train_one_epoch, evaluate. Every row starts
    from the same seed and sees the same batches in the same order (its own seeded loader)."""
    change, build = ROWS[name]
    train.set_seed(recipe.seed)
    model = build().to(device)
    loader = train.TensorLoader(train_set, recipe.batch_size, shuffle=True, seed=recipe.seed)
    optimizer, scheduler = train.make_optimizer(model, recipe, total_steps=recipe.epochs * len(loader))
    row = {"name": name, "change": change, "model": type(model).__name__,
           "parameters": train.count_parameters(model), "status": "completed", "epochs": []}
    global_step, batch_losses, train_seconds = 0, [], 0.0
    try:
        for epoch in range(1, recipe.epochs + 1):
            started = time.perf_counter()
            train_loss, train_acc, global_step = train.train_one_epoch(
                model, loader, optimizer, scheduler, epoch, recipe.epochs, global_step, batch_losses,
                recipe.diverged_loss)
            seconds = time.perf_counter() - started  # train_one_epoch reads every loss: the GPU is synced
            train_seconds += seconds
            val_loss, val_acc = train.evaluate(model, train.TensorLoader(val_set, 1024), device)
            row["epochs"].append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                                  "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds})
            tqdm.write(f"  {name} epoch {epoch:>2}/{recipe.epochs}  train loss {train_loss:.4f}  "
                       f"val acc {val_acc:.2%}  {seconds:.1f}s")
    except train.TrainingDiverged as err:
        # A model that cannot be trained with this recipe is a result, not a crash: the row says so.
        row.update(status="diverged", error=str(err))
        tqdm.write(f"  {name} diverged: {err}")
    if row["status"] == "completed":
        # Step 3's question in eval mode (no dropout, BatchNorm's running statistics), as the
        # capacity check asks it: how much of its own training split does the model get right?
        train_eval_loss, train_eval_acc = train.evaluate(model, train.TensorLoader(train_set, 1024), device)
        last = row["epochs"][-1]
        row.update(train_loss=last["train_loss"], train_loss_eval=train_eval_loss, train_accuracy=train_eval_acc,
                   val_loss=last["val_loss"], val_accuracy=last["val_accuracy"])
    else:
        row.update(train_loss=None, train_loss_eval=None, train_accuracy=None, val_loss=None, val_accuracy=None)
    row["train_seconds"] = train_seconds
    return row


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------
def markdown_table(rows: list[dict], caption: str) -> str:
    lines = [caption, "",
             "| # | model | parameters | final train loss | train accuracy (eval) | validation accuracy | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        number = list(ROWS).index(row["name"]) + 1
        if row["status"] == "completed":
            numbers = f"{row['train_loss']:.4f} | {row['train_accuracy']:.2%} | {row['val_accuracy']:.2%}"
        else:
            numbers = f"{row['status']} | - | -"
        lines.append(f"| {number} | `{row['name']}`: {row['change']} | {row['parameters']:,} | {numbers} "
                     f"| {row['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def table_caption(results: dict) -> str:
    return (f"Fashion-MNIST v11-step3, complexify one at a time: {results['epochs']} epoch(s) each, "
            f"{results['train_size']:,} training / {results['val_size']:,} validation images, seed {results['seed']}, "
            f"{results['device']}, torch {results['torch_version']}, {results['date']}. "
            f"Command: `{results['command']}`")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=train.HelpFormatter)
    p.add_argument("--epochs", type=int, default=train.EPOCHS, help="passes over the training split, every row")
    p.add_argument("--seed", type=int, default=train.SEED, help="one seed, set again before every row")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=train.DEVICE,
                   help="auto: cuda, mps, cpu")
    p.add_argument("--data-dir", type=existing_dir, default=train.DATA_DIR, help="folder with the Fashion-MNIST files")
    p.add_argument("--out", type=Path, default=None,
                   help="exactly this folder; without it, a new dated folder under outputs/complexify/")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out reuse a folder that already holds a run's results")
    p.add_argument("--quick", action="store_true",
                   help=f"{train.QUICK_TRAIN_SIZE} training images, {train.QUICK_EPOCHS} epoch: every code path in seconds")
    p.add_argument("--only", nargs="+", choices=list(ROWS), metavar="ROW", default=None,
                   help=f"run only these rows, in the ladder's order ({', '.join(ROWS)}); None: all of them")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.quick:
        args.epochs = min(args.epochs, train.QUICK_EPOCHS)
    return args


def recipe_from(args: argparse.Namespace) -> argparse.Namespace:
    """What train.split_data and train.make_optimizer read from train.py's config: its
    defaults, with this run's seed, epochs and --quick."""
    return argparse.Namespace(
        seed=args.seed, epochs=args.epochs, quick=args.quick, val_size=train.VAL_SIZE,
        batch_size=train.BATCH_SIZE, lr=train.LEARNING_RATE, lr_schedule=train.LR_SCHEDULE,
        weight_decay=train.WEIGHT_DECAY, diverged_loss=train.DIVERGED_LOSS)


def warm_up(device: torch.device, images: torch.Tensor) -> None:
    """One forward and backward pass before the first row, so that row 1's seconds do not
    include the GPU's start-up (CUDA context, cuBLAS and cuDNN handles). Runs before the
    rows seed, so it changes no row's numbers."""
    if device.type == "cpu":
        return
    model = PlainNet().to(device)
    model(images).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def main(argv=None) -> dict:
    """Train every row, write each as it finishes, print the table; return results.json's dict.

    Exit 2 for bad flags, missing data or an unwritable --out; 130 for Ctrl-C, with the
    rows done kept in complexify.jsonl, complexify.md and results.json."""
    args = parse_args(argv)
    recipe = recipe_from(args)
    names = [name for name in ROWS if args.only is None or name in args.only]
    try:
        # outputs/complexify/<date>-<mode>/, with its own latest: outputs/latest stays train.py's newest run
        out = make_run_dir(train.OUT_DIR / "complexify", "quick" if args.quick else "full", args.out,
                           overwrite=args.overwrite)
        device = train.pick_device(args.device)
    except (RunFolderError, train.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    results = {
        "version": "fashionmnist/v11-step3",
        "script": "complexify.py",
        "status": "running",
        "command": " ".join(["python complexify.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": train.device_name(device),
        "torch_version": torch.__version__,
        "seed": args.seed,
        "epochs": args.epochs,
        "quick": args.quick,
        "recipe": vars(recipe),
        "rows_requested": names,
        "rows": [],
    }
    run = train.Run(args, out, device, results)
    run.save()  # the folder holds a run from the start: a second run into the same --out is refused
    jsonl = out / JSONL_FILE
    jsonl.write_text("")
    print("=" * 78)
    print(f"Fashion-MNIST v11-step3 complexify | device {results['device']} | torch {torch.__version__} | "
          f"seed {args.seed} | {args.epochs} epoch(s) per row" + (" | QUICK MODE" if args.quick else ""))
    print("=" * 78)
    with stop_cleanly(run):  # Ctrl-C anywhere: exit 130, results.json says interrupted
        try:
            raw = train.load_raw_data(args.data_dir)
        except DataNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        # The data on the device once, as train.py does; the test split is made but never looked at.
        train_set, val_set, _test_set = train.split_data(*raw, recipe, device)
        results.update(train_size=len(train_set), val_size=len(val_set))
        print(f"Split: {len(train_set)} train, {len(val_set)} validation")
        warm_up(device, train_set.images[:8])
        for i, name in enumerate(names, 1):
            print(f"\n[{i}/{len(names)}] {name}: {ROWS[name][0]}")
            try:
                row = train_row(name, recipe, train_set, val_set, device)
            except KeyboardInterrupt:
                done = len(results["rows"])
                print(f"\nInterrupted in row '{name}'; " + (f"the {done} row(s) before it are kept in {jsonl} and "
                      f"{out / TABLE_FILE}." if done else "no row was finished."), file=sys.stderr)
                raise
            results["rows"].append(row)
            with open(jsonl, "a") as f:  # appended whole, one line per finished model
                f.write(json.dumps(row) + "\n")
            write_text(out / TABLE_FILE, markdown_table(results["rows"], table_caption(results)))
            run.save()
        table = markdown_table(results["rows"], table_caption(results))
        write_text(out / TABLE_FILE, table)
        run.save(status="completed", exit_code=0)
        print("\n" + table, end="")
        diverged = [row["name"] for row in results["rows"] if row["status"] != "completed"]
        if diverged:
            print(f"Diverged with v11's recipe: {', '.join(diverged)} (its row says where and why).")
        print(f"Rows: {jsonl}; table: {out / TABLE_FILE}; all of it: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
