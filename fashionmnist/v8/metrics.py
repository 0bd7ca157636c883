"""Evaluation metrics."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model, loader, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole loader, in eval mode."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return total_loss / seen, correct / seen


# ---------------------------------------------------------------------------
# v7: evaluation that explains. Accuracy is one number; these say where it is lost
# (which classes, confused with which), how wrong the mistakes are (confident or
# not, right answer in the top 2?), and whether the confidences can be believed.
# Each function is plain tensor arithmetic, exact on hand-made inputs (see the tests).
# ---------------------------------------------------------------------------
@torch.no_grad()
def predict(model, loader, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels and images of a whole loader, on the CPU, in eval mode.

    model.eval() is what makes these numbers the model's: in train mode BatchNorm would
    normalise each test batch with its own statistics (the result depends on which images
    share a batch) and every report below would describe a different, noisier model."""
    model.eval()
    all_logits, all_labels, all_images = [], [], []
    for images, labels in loader:
        all_logits.append(model(images.to(device)).float().cpu())
        all_labels.append(labels.cpu())
        all_images.append(images.cpu())
    return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_images)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, row = true class, column = predicted class: entry [i, j] is how many images of
    class i were called j. The diagonal holds the correct ones; each row sums to the number of
    images of that class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def normalise_rows(confusion: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum: the share of class i's images that went to each class (the
    diagonal is the class's recall). A row without images stays 0."""
    counts = confusion.double()
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def per_class_metrics(confusion: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 per class, from the confusion matrix.

    precision_k = correct k / predicted k (of the images called k, how many are k),
    recall_k = correct k / true k (of the images of class k, how many were found),
    F1_k = 2 precision recall / (precision + recall), their harmonic mean.
    A class never predicted has precision 0 (not NaN), a class with no images recall 0,
    and F1 is 0 where both are 0, so that means over classes stay defined."""
    counts = confusion.double()
    correct = counts.diag()
    predicted, true = counts.sum(0), counts.sum(1)
    precision = torch.where(predicted > 0, correct / predicted.clamp_min(1), torch.zeros_like(correct))
    recall = torch.where(true > 0, correct / true.clamp_min(1), torch.zeros_like(correct))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp_min(1e-300), torch.zeros_like(correct))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": true.long().tolist()}


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of images whose true class is among the k highest logits. Top-1 is the accuracy;
    top-2 says how many mistakes were a near miss (shirt vs. T-shirt) rather than nonsense."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.view(-1, 1)).any(1).double().mean().item()


def calibration(confidences: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> dict:
    """Reliability diagram and expected calibration error (ECE, Guo et al. 2017).

    The confidences (the largest softmax probability of each image) are sorted into `bins`
    equal-width intervals (0, 1/bins], ..., ((bins-1)/bins, 1]; per bin, the mean confidence
    and the accuracy. A calibrated model is right 90% of the time when it says 0.9: the bars
    of the diagram lie on the diagonal. ECE = sum over bins of (images in bin / all images)
    x |accuracy - mean confidence|: 0 is perfect; overconfident networks trained on hard
    labels often show a few percent; label smoothing and MixUp push it down (or, with too much
    smoothing, turn it into underconfidence: bars above the diagonal)."""
    confidences, correct = confidences.double(), correct.double()
    index = ((confidences * bins).ceil().long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    confidence_sum = torch.bincount(index, weights=confidences, minlength=bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=bins)
    mean_confidence = torch.where(count > 0, confidence_sum / count.clamp_min(1), torch.zeros_like(count))
    accuracy = torch.where(count > 0, correct_sum / count.clamp_min(1), torch.zeros_like(count))
    ece = ((count / count.sum()) * (accuracy - mean_confidence).abs()).sum().item()
    return {"bins": bins, "count": count.long().tolist(), "mean_confidence": mean_confidence.tolist(),
            "accuracy": accuracy.tolist(), "ece": ece}


def most_confident_mistakes(probabilities: torch.Tensor, labels: torch.Tensor, count: int = 16) -> list[int]:
    """Indices of the wrong predictions, most confident first: where the model is sure and wrong
    are the images to look at (a mislabelled image, a class boundary the data set itself blurs)."""
    confidence, predicted = probabilities.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order][:count].tolist()


def explain(model, loader, device, num_classes: int, top_k: int = 3, bins: int = 15,
            mistakes: int = 16) -> tuple[dict, torch.Tensor]:
    """Every number above for one loader, in one dict (for results.json), and the images of the
    most confident mistakes (for their picture). Runs the model once, in eval mode (predict)."""
    logits, labels, images = predict(model, loader, device)
    probabilities = logits.softmax(1)
    confidence, predictions = probabilities.max(1)
    confusion = confusion_matrix(predictions, labels, num_classes)
    per_class = per_class_metrics(confusion)
    worst = most_confident_mistakes(probabilities, labels, mistakes)
    report = {
        "size": len(labels),
        "accuracy": (predictions == labels).double().mean().item(),
        "top_k_accuracy": {f"top{k}": top_k_accuracy(logits, labels, k) for k in range(1, top_k + 1)},
        "per_class": per_class,
        "macro_f1": sum(per_class["f1"]) / num_classes,
        "confusion_matrix": confusion.tolist(),
        "calibration": calibration(confidence, predictions == labels, bins),
        "mean_confidence": confidence.double().mean().item(),
        "most_confident_mistakes": [{"index": i, "label": int(labels[i]), "predicted": int(predictions[i]),
                                     "confidence": confidence[i].item()} for i in worst],
    }
    return report, images[worst]


# ---------------------------------------------------------------------------
# v8: run records. What the optimizer did in every epoch, measured by hooks on the
# run's own optimizer, so the training code itself stays exactly v6's.
# ---------------------------------------------------------------------------
def layer_group(parameter_name: str) -> str:
    """The layer group of a parameter: the model's top-level part ('stem', 'layer1' ... 'fc')."""
    return parameter_name.split(".")[0]


class TrainingMonitor:
    """Gradient norms and update-to-weight ratios per layer group, from hooks on the optimizer.

    Before every `every`-th optimizer step of an epoch (steps 0, every, 2 x every, ...) it
    reads the gradients and keeps a copy of the weights; right after the step it measures
    how far each group moved: update-to-weight ratio = ||W_after - W_before|| / ||W_before||.
    Karpathy's rule of thumb: around 1e-3 per step is healthy; 1e-1 means the learning rate
    is far too high for that group, 1e-5 that it hardly learns. The gradient norm is the
    L2 norm over all parameters (and per group): a norm that grows epoch by epoch
    precedes many divergences, one that collapses to 0 a dead network.
    The hooks only read: weights, gradients and random numbers are untouched, so a run
    with the monitor gives the same model as one without. Sampling every 10th step keeps
    the cost near zero; the numbers stay on the device until `epoch_summary` reads them.
    """

    def __init__(self, model, optimizer, every: int = 10):
        self.every = every
        self.groups: dict[str, list[torch.nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.groups.setdefault(layer_group(name), []).append(p)
        self.optimizer = optimizer
        self.handles = [optimizer.register_step_pre_hook(self._before_step),
                        optimizer.register_step_post_hook(self._after_step)]
        self._reset()

    def _reset(self) -> None:
        self.step_in_epoch, self.samples, self.before = 0, [], None
        self.first_lr = self.last_lr = None
        self.max_lr = 0.0

    def _before_step(self, optimizer, args, kwargs) -> None:
        lr = optimizer.param_groups[0]["lr"]
        self.first_lr = lr if self.first_lr is None else self.first_lr
        self.last_lr, self.max_lr = lr, max(self.max_lr, lr)
        if self.step_in_epoch % self.every == 0:
            grad_sq = torch.stack([torch.stack([p.grad.detach().float().pow(2).sum() if p.grad is not None
                                                else p.new_zeros((), dtype=torch.float32) for p in params]).sum()
                                   for params in self.groups.values()])
            self.before = ([[p.detach().clone() for p in params] for params in self.groups.values()], grad_sq)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.before is not None:
            weights, grad_sq = self.before
            moved = torch.stack([torch.stack([(p.detach() - w).float().pow(2).sum() for p, w in zip(params, old)]).sum()
                                 for params, old in zip(self.groups.values(), weights)])
            size = torch.stack([torch.stack([w.float().pow(2).sum() for w in old]).sum() for old in weights])
            self.samples.append(torch.stack([grad_sq, moved, size]))
            self.before = None
        self.step_in_epoch += 1

    def epoch_summary(self) -> dict:
        """Means over the sampled steps of this epoch (one read from the device), then a fresh start."""
        summary = {"learning_rate": self.last_lr, "learning_rate_first": self.first_lr,
                   "learning_rate_max": self.max_lr if self.last_lr is not None else None,
                   "monitored_steps": len(self.samples), "optimizer_steps": self.step_in_epoch}
        if self.samples:
            grad_sq, moved, size = torch.stack(self.samples).double().cpu().unbind(1)  # (samples, groups) each
            names = list(self.groups)
            summary["grad_norm"] = grad_sq.sum(1).sqrt().mean().item()
            summary["grad_norm_per_group"] = dict(zip(names, grad_sq.sqrt().mean(0).tolist()))
            summary["update_ratio_per_group"] = dict(zip(names, (moved.sqrt() / size.sqrt().clamp_min(1e-30))
                                                         .mean(0).tolist()))
        else:
            summary.update(grad_norm=None, grad_norm_per_group=None, update_ratio_per_group=None)
        self._reset()
        return summary

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
