"""The bugs planted in exercises/find-the-bugs/train.py, as textual edits of solution/train.py.

One list for the tests and for anyone re-measuring the exercise: applying every edit
to the solution must give the exercise's train.py byte for byte (a test holds it to
that), so this list is the exercise's answer key, and each entry says which check of
`--preflight` must name the bug.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXERCISE = REPO_ROOT / "exercises" / "find-the-bugs"
SOLUTION = EXERCISE / "solution" / "train.py"


@dataclass(frozen=True)
class Bug:
    old: str  # text in solution/train.py (occurs exactly once)
    new: str  # what the exercise's train.py has instead
    check: str  # the check that must fail when this bug alone is planted
    hint: str  # words of that check's hint
    failures: frozenset  # every check that fails with this bug alone (real data, input-independent baseline off)


BUGS = {
    # the five of seed 003
    "learning rate far too high": Bug(
        "LEARNING_RATE = 1e-3  # Adam's default; a safe first choice before any tuning\n",
        "LEARNING_RATE = 0.1  # the classic starting learning rate (ResNet papers); the cosine schedule decays it\n",
        "overfit_one_batch", "check the learning rate", frozenset({"overfit_one_batch", "step_gradient"})),
    "sigmoid on the outputs before the loss": Bug(
        "    logits = model(images)\n",
        "    logits = torch.sigmoid(model(images))  # class scores in [0, 1]\n",
        "overfit_one_batch", "ln(1 + 9/e)", frozenset({"overfit_one_batch", "step_gradient"})),
    "loss without its target": Bug(
        "    loss = loss_fn(logits, labels)\n",
        "    loss = loss_fn(logits, logits.argmax(dim=1))\n",
        "overfit_one_batch", "trains on other labels", frozenset({"overfit_one_batch", "step_gradient"})),
    "no backward()": Bug(
        "    loss.backward()\n",
        "",
        "step_gradient", "No gradient reaches optimizer.step()", frozenset({"overfit_one_batch", "step_gradient"})),
    "no optimizer.step()": Bug(
        "    optimizer.step()\n    scheduler.step()\n",
        "    scheduler.step()\n",
        "overfit_one_batch", "does not move", frozenset({"overfit_one_batch", "step_gradient"})),
    # three that the v10 checks exist for
    "forward mixes the batch": Bug(
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        x = (x - x.mean()) / (x.std() + 1e-5)  # standardise: zero mean, unit variance\n",
        "batch_independence", "mixed inside the model", frozenset({"batch_independence"})),
    "dead conv blocks": Bug(
        "        return self.classifier(self.conv2(self.conv1(x)))\n",
        "        features = self.conv2(self.conv1(x))\n"
        "        self.feature_maps = features.detach()  # kept to look at the feature maps after a forward pass\n"
        "        return self.classifier(self.feature_maps)\n",
        "gradient_flow", "no .detach()", frozenset({"gradient_flow", "batch_independence"})),
    "inputs not divided by 255": Bug(
        "    return images_uint8.unsqueeze(1).float().div(255.0)\n",
        "    return images_uint8.unsqueeze(1).float()\n",
        "input_before_net", "/255", frozenset({"input_before_net", "loss_at_init"})),
}


def plant(source: str, names) -> str:
    """`source` with the named bugs planted; each edit must apply exactly once."""
    for name in names:
        bug = BUGS[name]
        count = source.count(bug.old)
        if count != 1:
            raise AssertionError(f"{name}: {bug.old!r} occurs {count} times in the source")
        source = source.replace(bug.old, bug.new)
    return source
