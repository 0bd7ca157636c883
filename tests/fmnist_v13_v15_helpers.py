"""The inherited checks of fashionmnist/v13-step5, v14-step6 and v15-speed, each against its bug.

tests/test_fashionmnist_mutations.py plants the bugs of the checks that v10-v12 brought in, but
only into v10's, v11's and v12's train.py. v13, v14 and v15 run the same checks on their own
training code: v13 and v14 on v12's step (pinned by tests/test_fashionmnist_diffs.py), v15 on
its own (a sync-free step that returns a device tensor, uint8 storage, a warm-up schedule, its
own overfit_one_batch). Each case here hands a check what the version's checks_before_training
(or analyse) builds from its own train.py: the model class, make_optimizer with the config, the
step and epoch with the run's loss settings, its loaders. One bug is planted into one of those
pieces (a step that no longer clears the gradients, a loader that forgot /255, ...), and the
check must fail with the hint that names it; the unplanted piece must pass next to it, with the
same budget, so the failure is the bug's and not the budget's. Direct calls, under a second to
~4 s each on two CPU cores, on a narrow ResNet (FLAGS); a --preflight per bug would cost ~6 s
more and could not aim at one check.
"""
from __future__ import annotations

import functools
import types
import warnings

import pytest
import torch
import torch.nn as nn

from fmnist_helpers import VersionContext

# The run's flags, not changes of its code: a narrow ResNet and a learning rate at which the clean
# pieces pass within the budgets below, on the real data and on the generated stand-in (v13's default
# 3e-4 needs ~10x the steps). The budgets are the checks' own parameters: 50 baseline steps of 32
# images (--quick: 40 of 128), at most 100 overfit steps (300).
FLAGS = ["--channels", "8", "--lr", "1e-2"]
BASELINE_STEPS, BASELINE_BATCH, OVERFIT_STEPS = 50, 32, 100


def own_pieces(train, data_dir, out) -> types.SimpleNamespace:
    """The pieces `train` (a version's train.py, just imported) hands its checks, on --quick's data."""
    import debug_tools
    import metrics

    cfg = train.parse_args(["--quick", "--device", "cpu", "--data-dir", str(data_dir), *FLAGS])
    if cfg.bf16 is None:  # start_run's rule: bf16 on CUDA only
        cfg.bf16 = False
    raw = train.load_raw_data(cfg.data_dir)
    train_set, val_set, _ = train.split_data(*raw, cfg, torch.device("cpu"))
    step_flags = {"diverged_loss": cfg.diverged_loss, "label_smoothing": cfg.label_smoothing, "bf16": cfg.bf16}
    epoch_flags, loader_flags = {}, {}
    if hasattr(cfg, "sync_free"):  # v15: the step leaves the loss on the device, the epoch reads it once
        step_flags["sync_free"] = cfg.sync_free
        epoch_flags = {"sync_free": cfg.sync_free, "diverged_loss": cfg.diverged_loss}
        loader_flags = {"channels_last": cfg.channels_last}
    model_flags = {"channels": cfg.channels, "dropout": cfg.dropout}
    if hasattr(cfg, "stem_stride"):
        model_flags["stem_stride"] = cfg.stem_stride
    augmentation = train.Augmentation(cfg.crop_padding, cfg.flip_probability, cfg.erase_probability)
    step = functools.partial(train.training_step, **step_flags)
    images, labels = train_set[:64]
    return types.SimpleNamespace(
        train=train, tools=debug_tools, metrics=metrics, cfg=cfg, raw=raw, train_set=train_set, val_set=val_set,
        out=out, model_flags=model_flags, augmentation=augmentation, loader_flags=loader_flags,
        make_optimizer=functools.partial(train.make_optimizer, cfg=cfg), step=step,
        epoch=functools.partial(train.train_one_epoch, step=step, **epoch_flags),
        loss=functools.partial(train.loss_fn, label_smoothing=cfg.label_smoothing), images=images, labels=labels,
        training_loader=functools.partial(train.TensorLoader, train_set, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                          augment=augmentation, **loader_flags),
        val_loader=train.TensorLoader(val_set, 1024, **loader_flags))


def own_fixture(version):
    """The module fixture `own` of a version's test file: its pieces, built once per module."""
    @pytest.fixture(scope="module")
    def own(fmnist_data, tmp_path_factory):
        with VersionContext(version) as train:
            yield own_pieces(train, fmnist_data[0], tmp_path_factory.mktemp("own"))
    return own


def model_of(own, seed: int = 0):
    torch.manual_seed(seed)
    return own.train.ResNet(**own.model_flags)


def first_block(own, model):
    return next(m for m in model.modules() if isinstance(m, own.train.BasicBlock))


def epoch_with(own, step):
    """The run's train_one_epoch with another step, its other flags kept."""
    return functools.partial(own.epoch.func, **{**own.epoch.keywords, "step": step})


# ---------------------------------------------------------------------------
# The planted bugs: each is one line of train.py deleted or changed
# ---------------------------------------------------------------------------
def without_zero_grad(step):
    """optimizer.zero_grad() deleted from training_step: gradients pile up over steps."""
    def planted(model, images, labels, optimizer, scheduler):
        optimizer.zero_grad = lambda *args, **kwargs: None
        return step(model, images, labels, optimizer, scheduler)
    return planted


def without_optimizer_step(step):
    """optimizer.step() deleted from training_step: nothing learns."""
    def planted(model, images, labels, optimizer, scheduler):
        optimizer.step = lambda *args, **kwargs: None
        return step(model, images, labels, optimizer, scheduler)
    return planted


class _NotStepped:
    def step(self):
        pass


def without_scheduler_step(step):
    """scheduler.step() deleted from training_step: the LR stays at its first value."""
    def planted(model, images, labels, optimizer, scheduler):
        return step(model, images, labels, optimizer, _NotStepped())
    return planted


def freezing_batchnorm(step):
    """A 'freeze BatchNorm' snippet run inside the training step."""
    def planted(model, images, labels, optimizer, scheduler):
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.eval()
        return step(model, images, labels, optimizer, scheduler)
    return planted


# ---------------------------------------------------------------------------
# One case per check: (clean result, planted result, words the planted verdict must say)
# ---------------------------------------------------------------------------
def input_before_net(own):
    """The loader's uint8 -> float conversion (v15's as_float, v13's to_tensor) without its / 255."""
    class ForgotTheDivision:
        dataset = own.train_set

        def __iter__(self):
            for images, labels in own.training_loader():
                yield images * 255, labels
    tools = own.tools
    return (tools.visualize_input_before_net(own.training_loader(), out_dir=own.out),
            tools.visualize_input_before_net(ForgotTheDivision(), out_dir=own.out), "not divided by 255?")


def augmentation(own):
    """Seed 004's bug: the validation loader built with the training augmentation."""
    train, cfg = own.train, own.cfg

    def verdict(val_loader):  # v13's and v14's wiring: validation only (the test split is not read before the end)
        return own.tools.verify_augmentation(own.training_loader(), {"validation": val_loader},
                                             train.unaugmented_images(own.raw, cfg),
                                             expected_changed=own.augmentation.changed_share(), out_dir=own.out)
    augmented = train.TensorLoader(own.val_set, 1024, augment=own.augmentation, **own.loader_flags)
    return verdict(own.val_loader), verdict(augmented), "validation batch at image 0 differs"


def loss_at_init(own):
    """The last layer drawn with std 1 instead of 0.01: confidently wrong before the first step."""
    model, planted = model_of(own), model_of(own)
    nn.init.normal_(planted.fc.weight, std=1.0)
    check = functools.partial(own.tools.verify_loss_at_init, loader=own.training_loader(), loss_fn=own.loss,
                              num_classes=10, tolerance=own.cfg.loss_at_init_tolerance)
    return check(model), check(planted), "Initial loss too high"


def optimizer_config(own):
    """The optimizer built over the classifier only: the convolutions never learn."""
    model, cfg = model_of(own), own.cfg
    total = cfg.epochs * len(own.training_loader())
    lr = cfg.lr * (own.train.lr_factor(0, total, cfg.lr_schedule, cfg.warmup_fraction)
                   if hasattr(own.train, "lr_factor") else 1.0)  # v15: the one-cycle warm-up's first LR
    check = functools.partial(own.tools.verify_optimizer_config, model, lr=lr, weight_decay=cfg.weight_decay)
    return (check(own.make_optimizer(model, total_steps=total)[0]),
            check(own.make_optimizer(model.fc, total_steps=total)[0]), "not in the optimizer")


def lr_schedule(own):
    """scheduler.step() deleted from the step: the run's epoch never advances the schedule."""
    model, cfg = model_of(own), own.cfg
    steps_per_epoch = len(own.training_loader())
    batches = [(own.images[i:i + 16], own.labels[i:i + 16]) for i in range(0, 64, 16)]

    def verdict(step):
        optimizer, scheduler = own.make_optimizer(model, total_steps=cfg.epochs * steps_per_epoch)
        one_epoch = functools.partial(epoch_with(own, step), epoch=1, epochs=1, global_step=0, batch_losses=[])
        return own.tools.verify_lr_schedule(model, optimizer, scheduler, epochs=cfg.epochs,
                                            steps_per_epoch=steps_per_epoch, make_optimizer=own.make_optimizer,
                                            train_one_epoch=one_epoch, batches=batches)
    return verdict(own.step), verdict(without_scheduler_step(own.step)), "advanced the scheduler 0 times"


def gradient_flow(own):
    """A residual branch cut from the graph: its first convolution never gets a gradient."""
    model, planted = model_of(own), model_of(own)
    first_block(own, planted).conv2.register_forward_pre_hook(lambda layer, inputs: (inputs[0].detach(),))
    check = functools.partial(own.tools.verify_gradient_flow, images=own.images, labels=own.labels,
                              loss_fn=own.loss)
    return check(model), check(planted), "no .detach()"


def step_gradient(own):
    """optimizer.zero_grad() deleted from the step: step B trains on A's gradient plus its own."""
    model = model_of(own)
    check = functools.partial(own.tools.verify_step_gradient, model, own.images, own.labels,
                              make_optimizer=own.make_optimizer, loss_fn=own.loss)
    return (check(training_step=own.step), check(training_step=without_zero_grad(own.step)),
            "Gradients accumulate")


def overfit_one_batch(own):
    """optimizer.step() deleted from the step: the loss on the 8 images stays where it started."""
    model, cfg = model_of(own), own.cfg
    images, labels = own.train_set[:8]
    check = functools.partial(own.tools.overfit_one_batch, model, images, labels, make_optimizer=own.make_optimizer,
                              loss_fn=own.loss, steps=OVERFIT_STEPS, out_dir=own.out,
                              max_loss=own.tools.smoothing_floor(cfg.label_smoothing, 10) + cfg.overfit_max_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lr_scheduler.step() before optimizer.step(): that is the bug
        return check(training_step=own.step), check(training_step=without_optimizer_step(own.step)), \
            "does not move"


def batch_independence(own):
    """The classifier's input mixed over the batch (a reduction over dim 0 in forward())."""
    model, planted = model_of(own), model_of(own)
    planted.fc.register_forward_pre_hook(lambda layer, inputs: (inputs[0] + inputs[0].mean(0, keepdim=True),))
    images = own.val_set[:8][0]
    return (own.tools.verify_batch_independence(model, images),
            own.tools.verify_batch_independence(planted, images), "mixed inside the model")


def batch_independence_after_training(own):
    """analyse's run of the same check, under its own name, on the same planted model."""
    model, planted = model_of(own), model_of(own)
    planted.fc.register_forward_pre_hook(lambda layer, inputs: (inputs[0] + inputs[0].mean(0, keepdim=True),))
    check = functools.partial(own.tools.verify_batch_independence, images=own.val_set[:8][0],
                              name="batch_independence_after_training")
    return check(model), check(planted), "mixed inside the model"


def train_eval_modes(own):
    """BatchNorm switched to eval inside the step: it trains with frozen statistics."""
    model = model_of(own)
    few = own.train.TensorLoader(own.train.FashionMNISTTensors(own.images[:32], own.labels[:32],
                                                               own.train_set.classes), 16)

    def verdict(step):
        def own_epoch(probe):  # checks_before_training's: the run's epoch on two batches
            optimizer, scheduler = own.make_optimizer(probe, total_steps=len(few))
            epoch_with(own, step)(probe, few, optimizer, scheduler, 0, 0, 0, [])
        return own.tools.verify_train_eval_modes(model, train_epoch=own_epoch, evaluate=lambda probe: (
            own.metrics.evaluate(probe, few, torch.device("cpu"))))
    return verdict(own.step), verdict(freezing_batchnorm(own.step)), "'freeze BatchNorm'"


def input_independent_baseline(own):
    """forward() throws the image away: the real-input model learns no more than the zero-input one."""
    model, planted = model_of(own), model_of(own)
    planted.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 0,))
    loader = own.train.TensorLoader(own.train_set, BASELINE_BATCH, shuffle=True, seed=own.cfg.seed,
                                    augment=own.augmentation, **own.loader_flags)
    check = functools.partial(own.tools.test_input_independent_baseline, train_loader=loader,
                              val_loader=own.val_loader, make_optimizer=own.make_optimizer, training_step=own.step,
                              steps=BASELINE_STEPS)
    return check(model), check(planted), "does not learn from the images"


def training_loss_decreases(own):
    """The batch losses the run's own epoch records (v15: read once, at the epoch's end), over 32
    batches of 16; with optimizer.step() deleted they stay where they started."""
    loader = own.train.TensorLoader(own.train_set, 16, shuffle=True, seed=own.cfg.seed, **own.loader_flags)

    def losses(step):
        model = model_of(own)
        optimizer, scheduler = own.make_optimizer(model, total_steps=len(loader))
        recorded = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epoch_with(own, step)(model, loader, optimizer, scheduler, 1, 1, 0, recorded)
        assert len(recorded) == len(loader)
        return recorded
    check = own.tools.verify_decreasing_loss
    return check(losses(own.step)), check(losses(without_optimizer_step(own.step))), "Training loss does not fall"


def train_test_gap(own):
    """Memorising: 99% on the training images, 90% on the test images (recorded metrics, as analyse has them)."""
    def recorded(accuracy):
        return {"accuracy": accuracy, "loss": 1 - accuracy, "top3_accuracy": 1.0, "macro_f1": accuracy}
    check = functools.partial(own.metrics.compare_train_test_metrics, max_gap=own.cfg.max_train_test_gap)
    return check(recorded(0.95), recorded(0.94)), check(recorded(0.99), recorded(0.90)), "Strong overfitting"


INHERITED = {case.__name__: case for case in (
    input_independent_baseline, input_before_net, augmentation, loss_at_init, optimizer_config, lr_schedule,
    gradient_flow, step_gradient, overfit_one_batch, batch_independence, train_eval_modes, training_loss_decreases,
    train_test_gap, batch_independence_after_training)}


def judge(name: str, own) -> None:
    """The case's check passes on the version's own pieces and fails on the planted bug, saying why."""
    clean, planted, words = INHERITED[name](own)
    assert clean.name == planted.name == name
    assert clean.passed, f"{name} fails on the unplanted pieces: {clean.criterion} / {clean.hint}"
    assert not planted.passed, f"{name} passes with its bug planted: {planted.criterion}"
    assert words in planted.criterion + " " + planted.hint, (planted.criterion, planted.hint)
