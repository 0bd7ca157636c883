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
