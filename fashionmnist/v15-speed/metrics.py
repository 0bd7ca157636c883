"""Evaluation metrics: the quick loss/accuracy of every epoch, and the detailed
evaluation after training (step 5: significant digits, step 6: human-interpretable metrics)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from debug_tools import CheckResult


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


@torch.no_grad()
def compute_detailed_metrics(model, loader, device, num_classes: int = 10, num_mistakes: int = 16) -> dict:
    """Evaluate on the whole loader: accuracy with its standard error, top-k, per-class
    precision / recall / F1, the confusion matrix, and the most confident mistakes.

    On 10,000 test images one standard error of an accuracy near 93% is ~0.26
    percentage points: differences smaller than that are noise, not progress.
    """
    model.eval()
    all_probs, all_margins, all_labels, total_loss = [], [], [], 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        all_probs.append(F.softmax(logits, dim=1).cpu())
        top2 = logits.float().topk(2, dim=1).values
        all_margins.append((top2[:, 0] - top2[:, 1]).cpu())  # logit gap to the runner-up
        all_labels.append(labels.cpu())
    probs, margins, labels = torch.cat(all_probs), torch.cat(all_margins), torch.cat(all_labels)
    n = len(labels)
    predicted = probs.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones(n, dtype=torch.long), accumulate=True)
    true_positives = confusion.diag().float()
    support = confusion.sum(1).float()
    predicted_count = confusion.sum(0).float()
    precision = true_positives / predicted_count.clamp(min=1)
    recall = true_positives / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    top_k = probs.topk(min(5, num_classes), dim=1).indices
    accuracy = (predicted == labels).float().mean().item()
    wrong = (predicted != labels).nonzero().flatten()
    # Most confident first. float32's softmax rounds every logit gap above ~17 to exactly 1.0, so
    # among equal probabilities the gap to the runner-up (it does not saturate) decides the order.
    by_margin = wrong[margins[wrong].argsort(descending=True, stable=True)]
    confident_wrong = by_margin[probs[by_margin, predicted[by_margin]].argsort(descending=True, stable=True)]
    confident_wrong = confident_wrong[:num_mistakes]
    return {
        "num_samples": n,
        "loss": total_loss / n,
        "accuracy": accuracy,
        "accuracy_std_error": (accuracy * (1 - accuracy) / n) ** 0.5,
        "top3_accuracy": (top_k[:, :3] == labels[:, None]).any(1).float().mean().item(),
        "top5_accuracy": (top_k == labels[:, None]).any(1).float().mean().item(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "macro_f1": f1.mean().item(),
        "per_class_accuracy": recall.tolist(),
        "confusion_matrix": confusion.tolist(),
        "most_confident_mistakes": [
            {"index": i, "true": labels[i].item(), "predicted": predicted[i].item(),
             "confidence": probs[i, predicted[i]].item(), "margin": margins[i].item()}
            for i in confident_wrong.tolist()],
    }


def print_detailed_metrics(metrics: dict, name: str, classes: list[str] | None = None) -> None:
    """Accuracy with its error bar, top-k, and a per-class breakdown with text bars."""
    classes = classes or [str(i) for i in range(len(metrics["recall"]))]
    print(f"\n{name}: accuracy {metrics['accuracy']:.2%} +- {metrics['accuracy_std_error']:.2%} "
          f"(n={metrics['num_samples']}), loss {metrics['loss']:.4f}, top-3 {metrics['top3_accuracy']:.2%}, "
          f"top-5 {metrics['top5_accuracy']:.2%}, macro F1 {metrics['macro_f1']:.4f}")
    print(f"  {'class':<14}{'precision':>10}{'recall':>8}{'F1':>8}  accuracy")
    for i, c in enumerate(classes):
        bar = "#" * round(20 * metrics["recall"][i])
        print(f"  {c:<14}{metrics['precision'][i]:>10.3f}{metrics['recall'][i]:>8.3f}{metrics['f1'][i]:>8.3f}  "
              f"{bar:<20} {metrics['recall'][i]:.1%}")


def compare_train_test_metrics(train_metrics: dict, test_metrics: dict, max_gap: float = 0.05):
    """Train vs test accuracy: a gap above `max_gap` means the model memorises the training set.

    Both are measured in eval mode (no dropout), so the gap is not inflated by
    the noise dropout adds during training.
    """
    rows = [("accuracy", "accuracy"), ("loss", "loss"), ("top-3", "top3_accuracy"), ("macro F1", "macro_f1")]
    print(f"\n  {'metric':<10}{'train':>10}{'test':>10}{'gap':>10}")
    for label, key in rows:
        print(f"  {label:<10}{train_metrics[key]:>10.4f}{test_metrics[key]:>10.4f}"
              f"{train_metrics[key] - test_metrics[key]:>+10.4f}")
    gap = train_metrics["accuracy"] - test_metrics["accuracy"]
    return CheckResult(
        name="train_test_gap",
        passed=gap < max_gap,
        value=gap,
        threshold=max_gap,
        criterion=f"train accuracy - test accuracy < {max_gap:.2f} "
                  f"({train_metrics['accuracy']:.4f} - {test_metrics['accuracy']:.4f})",
        hint="Strong overfitting: add regularisation (dropout, weight decay, augmentation) or stop earlier.",
        details={"train_accuracy": train_metrics["accuracy"], "test_accuracy": test_metrics["accuracy"]},
    )
