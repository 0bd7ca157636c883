"""imagenette/v1 ... v5 teach one idea each, so `diff -ru vN-1 vN` must show that idea and
nothing else: metrics.py never changes, normalize.py (from v2 on) never changes, and
debug_tools.py and visualization.py only grow: every version keeps its predecessor's text,
statement by statement (comments between them included), and appends its new functions at
the end. The few in-place edits that are meant are listed below; an edit to any other
existing function, or a stale entry in the list, fails. Also: every version has its files,
and every train.py's --help runs and offers a flag for every constant of its configuration."""
from __future__ import annotations

import ast
import contextlib
import io
import re

import pytest

from conftest import REPO_ROOT
from fmnist_helpers import VersionContext
from imagenette_helpers import isolated_cache  # noqa: F401  (fixture: nothing is written to data/)

VERSIONS = [f"imagenette/v{n}" for n in range(1, 6)]
PREDECESSOR = dict(zip(VERSIONS[1:], VERSIONS[:-1]))
CODE_FILES = ["train.py", "debug_tools.py", "metrics.py", "visualization.py"]

# The only in-place edits a version makes to the files that otherwise only grow:
# "imports" are import statements it adds, "functions" the existing top-level definitions it changes,
# "constants" module-level names it may append (tuples of layer types a check needs).
INTENDED_EDITS = {
    # issue 27: first_batch judges a normalised batch by its own mean and std
    ("imagenette/v2", "debug_tools.py"): {"functions": {"inspect_batch"}},
    ("imagenette/v3", "debug_tools.py"): {"imports": {"import copy", "import torch.nn as nn"}},  # activation_statistics
    ("imagenette/v4", "debug_tools.py"): {"imports": {"import math", "import warnings"}},  # lr_schedule, loss_at_init
    # the floor for MixUp's soft targets; squeeze-excitation gates (one position per channel) reported, not judged
    ("imagenette/v5", "debug_tools.py"): {"functions": {"verify_loss_at_init", "activation_statistics"}},
}
GROWING_FILES = ["debug_tools.py", "visualization.py"]


def top_level(source: str) -> tuple[list[tuple[str, str | None, str]], str]:
    """(kind, name, text) of every top-level statement, the text running from the end of the
    previous statement (so comments, blank lines and decorators before it belong to it), and
    the text after the last statement."""
    lines = source.splitlines(keepends=True)
    statements, previous_end = [], 0
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            kind, name = "import", None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind, name = "definition", node.name
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            kind, name = "Assign", node.targets[0].id
        else:
            kind, name = type(node).__name__, None
        statements.append((kind, name, "".join(lines[previous_end:node.end_lineno])))
        previous_end = node.end_lineno
    return statements, "".join(lines[previous_end:])


def growth_problems(old_source: str, new_source: str, intended: dict) -> list[str]:
    """What in `new_source` is neither `old_source` kept as it was, nor an appended definition,
    nor one of the `intended` edits (imports added, functions changed). Empty: only growth."""
    old, old_tail = top_level(old_source)
    new, new_tail = top_level(new_source)
    problems = []
    old_imports = [text.strip() for kind, _, text in old if kind == "import"]
    new_imports = [text.strip() for kind, _, text in new if kind == "import"]
    if missing := [i for i in old_imports if i not in new_imports]:
        problems.append(f"imports removed or changed: {missing}")
    added = {i for i in new_imports if i not in old_imports}
    if added != intended.get("imports", set()):
        problems.append(f"imports added: {sorted(added)}, intended: {sorted(intended.get('imports', set()))}")
    old_rest = [s for s in old if s[0] != "import"]
    new_rest = [s for s in new if s[0] != "import"]
    changed = set()
    for i, (kind, name, text) in enumerate(old_rest):
        if i >= len(new_rest) or new_rest[i][:2] != (kind, name):
            problems.append(f"statement {i} ({kind} {name}) is gone or moved")
            return problems
        if new_rest[i][2] != text:  # an added import belongs to its own text, not to the next statement's
            if kind == "definition" and name in intended.get("functions", set()):
                changed.add(name)
            else:
                problems.append(f"{kind} {name} was edited in place")
    if stale := intended.get("functions", set()) - changed:
        problems.append(f"listed as edited but unchanged (or missing): {sorted(stale)}")
    for kind, name, _ in new_rest[len(old_rest):]:
        if kind != "definition" and not (kind == "Assign" and name in intended.get("constants", set())):
            problems.append(f"appended a {kind} statement, not a definition")
    old_names = {name for kind, name, _ in old_rest if kind == "definition"}
    if redefined := [name for kind, name, _ in new_rest[len(old_rest):] if name in old_names]:
        problems.append(f"appended definitions redefine existing ones: {redefined}")
    if new_tail.strip() != old_tail.strip():
        problems.append("the text after the last statement changed")
    return problems


def source(version: str, file: str) -> str:
    return (REPO_ROOT / version / file).read_text()


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_has_its_files(version):
    expected = set(CODE_FILES) | ({"normalize.py"} if version != "imagenette/v1" else set())
    present = {p.name for p in (REPO_ROOT / version).iterdir() if p.is_file()}
    assert expected <= present, f"{version} lacks {sorted(expected - present)}"
    if version == "imagenette/v1":
        assert "normalize.py" not in present  # normalisation is v2's idea


def test_metrics_is_identical_in_every_version():
    reference = (REPO_ROOT / VERSIONS[0] / "metrics.py").read_bytes()
    assert [v for v in VERSIONS if (REPO_ROOT / v / "metrics.py").read_bytes() != reference] == []


def test_normalize_is_identical_from_v2_on():
    reference = (REPO_ROOT / VERSIONS[1] / "normalize.py").read_bytes()
    assert [v for v in VERSIONS[1:] if (REPO_ROOT / v / "normalize.py").read_bytes() != reference] == []


# ---------------------------------------------------------------------------
# debug_tools.py and visualization.py only grow
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("file", GROWING_FILES)
@pytest.mark.parametrize("version", VERSIONS[1:])
def test_file_only_grows_apart_from_the_intended_edits(version, file):
    problems = growth_problems(source(PREDECESSOR[version], file), source(version, file),
                               INTENDED_EDITS.get((version, file), {}))
    assert problems == [], f"{PREDECESSOR[version]} -> {version}/{file}: {problems}"


@pytest.mark.parametrize("file", GROWING_FILES)
@pytest.mark.parametrize("version", VERSIONS[1:])
def test_every_version_adds_something(version, file):
    """Each version's lesson shows in both files: at least one new function in each."""
    old = {name for kind, name, _ in top_level(source(PREDECESSOR[version], file))[0] if kind == "definition"}
    new = {name for kind, name, _ in top_level(source(version, file))[0] if kind == "definition"}
    assert new - old, f"{version}/{file} adds no function"


APPENDED_FUNCTION = '''

def new_check(x):
    return x
'''


@pytest.mark.parametrize("mutate, message", [
    (lambda text: text.replace("    start = time.perf_counter()\n", "    start = time.perf_counter()  # edited\n", 1),
     "edited in place"),
    (lambda text: text.replace("import time\n", "import time\nimport os\n", 1), "imports added"),
    (lambda text: text.replace("@dataclass\nclass CheckResult", "# a new comment\n@dataclass\nclass CheckResult", 1),
     "edited in place"),
    (lambda text: text + "\nTHRESHOLD = 3\n", "appended a Assign statement"),
    (lambda text: text + "\n\ndef inspect_batch(x):\n    return x\n", "redefine existing"),
])
def test_the_growth_check_sees_an_unintended_edit(mutate, message):
    """Controls: the comparison fails on each kind of edit it exists to catch, and passes on a
    plain appended function."""
    old = source("imagenette/v2", "debug_tools.py")
    assert growth_problems(old, old + APPENDED_FUNCTION, {}) == []
    mutated = mutate(old)
    assert mutated != old
    problems = growth_problems(old, mutated, {})
    assert any(message in p for p in problems), problems


def test_the_intended_list_is_not_stale():
    """A function listed as edited that the version does not change is an error as well."""
    old = source("imagenette/v4", "debug_tools.py")
    problems = growth_problems(old, old, {"functions": {"verify_loss_at_init"}})
    assert problems == ["listed as edited but unchanged (or missing): ['verify_loss_at_init']"]


# ---------------------------------------------------------------------------
# --help, and a flag for every constant
# ---------------------------------------------------------------------------
FLAG_OF = {"LEARNING_RATE": "--lr", "OUT_DIR": "--out"}  # every other constant: --lower-case-with-hyphens


def configuration_constants(version: str) -> list[str]:
    """The constants of train.py's configuration block: from "Configuration: every constant can be
    overridden" to the --quick settings, which are not flags."""
    text = source(version, "train.py")
    block = text.split("# Configuration: every constant can be overridden on the command line.", 1)[1]
    block = block.split("\n# --quick", 1)[0]
    return re.findall(r"^([A-Z][A-Z0-9_]*) = ", block, flags=re.M)


@pytest.mark.parametrize("version", VERSIONS)
def test_help_lists_a_flag_for_every_constant(version):
    constants = configuration_constants(version)
    assert len(constants) >= 12 and "SEED" in constants and "DIVERGED_LOSS" in constants
    stdout = io.StringIO()
    with VersionContext(version) as train:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            train.main(["--help"])
        defaults = vars(train.parse_args([]))
        values = {name: getattr(train, name) for name in constants}
    assert exit_info.value.code == 0
    help_text = stdout.getvalue()
    assert help_text.startswith("usage:") and f"Imagenette v{version[-1]}" in help_text
    for name in constants:
        flag = FLAG_OF.get(name, "--" + name.lower().replace("_", "-"))
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", help_text), f"{version}: {name} has no flag {flag}"
        if name == "OUT_DIR":  # the outputs root: --out's default None means a new dated folder in it
            assert defaults["out"] is None
            continue
        assert defaults[flag[2:].replace("-", "_")] == values[name], f"{version}: {flag}'s default is not {name}"


# ---------------------------------------------------------------------------
# imagenette/v8 against imagenette/v7/v7a (its predecessor): the files v8 does not teach are
# byte-identical (metrics.py; normalize.py is v5's, v8 being a version folder directly under the
# track again; models/ is v7's, copied so that v8 imports only from its own folder); debug_tools.py
# and visualization.py only grow; --help offers a flag for every constant.
# ---------------------------------------------------------------------------
V8, V7A = "imagenette/v8", "imagenette/v7/v7a"
V8_IDENTICAL = {"metrics.py": V7A, "normalize.py": "imagenette/v5", "models/__init__.py": "imagenette/v7",
                "models/resnet.py": "imagenette/v7"}
V8_INTENDED = {"debug_tools.py": {"imports": {"import hashlib"}}, "visualization.py": {}}


@pytest.mark.parametrize("file", sorted(V8_IDENTICAL))
def test_v8_file_is_identical_to_its_source(file):
    assert (REPO_ROOT / V8 / file).read_bytes() == (REPO_ROOT / V8_IDENTICAL[file] / file).read_bytes()


@pytest.mark.parametrize("file", GROWING_FILES)
def test_v8_file_only_grows_from_v7a(file):
    assert growth_problems(source(V7A, file), source(V8, file), V8_INTENDED[file]) == []
    old = {name for kind, name, _ in top_level(source(V7A, file))[0] if kind == "definition"}
    new = {name for kind, name, _ in top_level(source(V8, file))[0] if kind == "definition"}
    assert new - old, f"v8/{file} adds no function"


def test_v8_imports_only_its_own_folder_and_shared():
    """No sys.path entry for ../ (v7a reaches ../models; v8 has its own copy)."""
    text = source(V8, "train.py")
    assert "VERSION_DIR.parent)" not in text and "REPO_ROOT = VERSION_DIR.parents[1]" in text
    with VersionContext(V8) as train:
        import sys

        assert sys.modules["models.resnet"].__file__ == str(REPO_ROOT / V8 / "models" / "resnet.py")
        assert train.VERSION == V8 and train.REPO_ROOT == REPO_ROOT


V8_FLAG_OF = {"LEARNING_RATE": "--lr", "OUT_DIR": "--out", "ARCHITECTURE": "--arch",
              "RUN_INPUT_INDEPENDENT_BASELINE": "--input-independent-baseline", "RUN_OVERFIT_TEST": "--overfit-test",
              "RUN_BATCH_INDEPENDENCE_TEST": "--batch-independence-test", "ENSEMBLE_SIZES": "--sizes",
              "READ_TEST_SET": "--test", "MEMBERS": "--members"}


def test_v8_help_lists_a_flag_for_every_constant():
    constants = configuration_constants(V8)
    assert {"MEMBERS", "ERASE_PROBABILITY", "TRIVIAL_AUGMENT", "TTA", "ADD_MEMBERS"} <= set(constants)
    stdout = io.StringIO()
    with VersionContext(V8) as train:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
            train.main(["--help"])
        defaults = vars(train.parse_args([]))
        values = {name: getattr(train, name) for name in constants}
    assert exit_info.value.code == 0 and "Imagenette v8" in stdout.getvalue()
    for name in constants:
        flag = V8_FLAG_OF.get(name, "--" + name.lower().replace("_", "-"))
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,]", stdout.getvalue()), f"{name} has no flag {flag}"
        if name == "OUT_DIR":
            continue
        default = defaults[flag[2:].replace("-", "_")]
        if name == "MEMBERS":  # None until parse_args resolves it: MEMBERS, or QUICK_MEMBERS under --quick
            assert default == values[name]
            continue
        assert default == (list(values[name]) if isinstance(values[name], tuple) else values[name]), name
