"""Honest scope in the early versions (issue 26).

fashionmnist v1..v9-step1 and imagenette v1..v5 keep their own, smaller preflight.
Each README says, in a short section, which checks its `--preflight` runs and which
classes of bug it cannot see, and links to the version whose preflight has the full
battery. These tests hold the section to the code: every check it names (in
backticks) is a key that the version's checks_before_training puts into the checks
dict (the names results.json reports), every such key is named, and the link
points to an existing README of the version with the battery.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

HEADING = "## What --preflight checks here"
MAX_LINES = 4  # non-empty lines under the heading: "two lines", a little slack
# version -> the README of the version whose preflight has the full battery
EARLY_VERSIONS = {
    **{f"fashionmnist/{v}": "fashionmnist/v10-step2/README.md"
       for v in ("v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9-step1")},
    **{f"imagenette/v{i}": "imagenette/v6/v6a/README.md" for i in range(1, 6)},
}
CHECKS_FUNCTION = "checks_before_training"  # what --preflight runs, then finish_preflight


def preflight_section(readme_text: str) -> list[str]:
    """The non-empty lines under the heading, up to the next heading."""
    lines = readme_text.splitlines()
    assert lines.count(HEADING) == 1, f"the README needs exactly one {HEADING!r}"
    body = []
    for line in lines[lines.index(HEADING) + 1:]:
        if line.startswith("#"):
            break
        if line.strip():
            body.append(line)
    return body


def named_checks(section: list[str]) -> set[str]:
    """The check names the section gives: every `identifier` in backticks."""
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", "\n".join(section)))


def preflight_check_keys(train_py: Path) -> set[str]:
    """The keys checks_before_training assigns (checks["name"] = ...): what results.json lists
    under "checks" after --preflight."""
    source = train_py.read_text()
    functions = [node for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.FunctionDef) and node.name == CHECKS_FUNCTION]
    assert len(functions) == 1, f"{train_py}: no single {CHECKS_FUNCTION}()"
    body = ast.get_source_segment(source, functions[0])
    return set(re.findall(r'checks\["([a-z0-9_]+)"\]\s*=(?!=)', body))


def scope_problems(readme_text: str, readme_dir: Path, train_py: Path, battery_readme: Path) -> list[str]:
    """Everything wrong with one README's section; [] when it is honest."""
    problems = []
    section = preflight_section(readme_text)
    if not section:
        return ["the section is empty"]
    if len(section) > MAX_LINES:
        problems.append(f"{len(section)} non-empty lines, more than {MAX_LINES}")
    named, keys = named_checks(section), preflight_check_keys(train_py)
    if not keys:
        problems.append(f"no checks found in {train_py}")
    if named - keys:
        problems.append(f"names checks this version's preflight does not run: {sorted(named - keys)} "
                        f"(it runs {sorted(keys)})")
    if keys - named:
        problems.append(f"does not name the checks {sorted(keys - named)}")
    links = re.findall(r"\]\(([^)\s]+)\)", "\n".join(section))
    targets = {(readme_dir / link).resolve() for link in links if not link.startswith(("http:", "https:"))}
    if battery_readme.resolve() not in targets:
        problems.append(f"no relative link to {battery_readme.relative_to(REPO_ROOT)} (links: {links})")
    for target in targets:
        if not target.is_file():
            problems.append(f"the link to {target} leads nowhere")
    return problems


@pytest.mark.parametrize("version", list(EARLY_VERSIONS))
def test_readme_states_the_preflight_scope(version):
    folder = REPO_ROOT / version
    battery = REPO_ROOT / EARLY_VERSIONS[version]
    assert battery.is_file(), f"the version with the full battery has no README: {battery}"
    problems = scope_problems((folder / "README.md").read_text(), folder, folder / "train.py", battery)
    assert not problems, f"{version}/README.md, {HEADING!r}: " + "; ".join(problems)


@pytest.mark.parametrize("version", ["fashionmnist/v1", "fashionmnist/v5", "imagenette/v4"])
def test_check_keys_are_found_in_the_source(version):
    """The parser sees the checks the version really runs (so the test above is not vacuous)."""
    keys = preflight_check_keys(REPO_ROOT / version / "train.py")
    expected = {"fashionmnist/v1": {"first_batch"},
                "fashionmnist/v5": {"first_batch", "train_eval_modes", "lr_finder", "lr_schedule", "splits_disjoint"},
                "imagenette/v4": {"first_batch", "loss_at_init", "lr_schedule", "class_balance"}}[version]
    assert expected <= keys, sorted(keys)
    assert "step_gradient" not in keys and "overfit_one_batch" not in keys


# ---------------------------------------------------------------------------
# Controls: the check above fails on a README that claims too much or links nowhere
# ---------------------------------------------------------------------------
def _readme_and_args(version: str):
    folder = REPO_ROOT / version
    return (folder / "README.md").read_text(), folder, folder / "train.py", REPO_ROOT / EARLY_VERSIONS[version]


def _with_section(text: str, new_lines: list[str]) -> str:
    old = "\n".join([HEADING, *preflight_section(text)])
    assert text.count(old) == 1
    return text.replace(old, "\n".join([HEADING, *new_lines]))


@pytest.mark.parametrize("version", ["fashionmnist/v4", "imagenette/v5"])
def test_control_a_check_the_version_does_not_have_fails(version):
    text, folder, train_py, battery = _readme_and_args(version)
    section = preflight_section(text)
    claimed = _with_section(text, [section[0].replace("`first_batch`", "`first_batch`, `step_gradient`"), *section[1:]])
    problems = scope_problems(claimed, folder, train_py, battery)
    assert any("does not run" in p and "step_gradient" in p for p in problems), problems


def test_control_a_check_left_out_fails():
    text, folder, train_py, battery = _readme_and_args("fashionmnist/v5")
    section = preflight_section(text)
    shortened = _with_section(text, [section[0].replace("`lr_finder`", "the LR finder"), *section[1:]])
    assert any("does not name the checks ['lr_finder']" in p for p in scope_problems(shortened, folder, train_py,
                                                                                      battery))


def test_control_a_wrong_or_missing_link_fails():
    text, folder, train_py, battery = _readme_and_args("imagenette/v3")
    section = preflight_section(text)
    broken = _with_section(text, [section[0], section[1].replace("../v6/v6a/README.md", "../v6/README.md")])
    problems = scope_problems(broken, folder, train_py, battery)
    assert any("no relative link" in p for p in problems) and any("leads nowhere" in p for p in problems), problems


def test_control_a_long_section_and_a_missing_heading_fail():
    text, folder, train_py, battery = _readme_and_args("fashionmnist/v1")
    section = preflight_section(text)
    padded = _with_section(text, [*section, "more", "and more", "and more still"])
    assert any("non-empty lines" in p for p in scope_problems(padded, folder, train_py, battery))
    with pytest.raises(AssertionError, match="exactly one"):
        scope_problems(text.replace(HEADING, "## Preflight"), folder, train_py, battery)
