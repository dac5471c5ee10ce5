"""The dependency rules of docs/architecture.md hold, and the check that says so can fail.

The rules are import-linter contracts in `.importlinter` (run `lint-imports` from the repository root to see them).
"""

import shutil
import subprocess
import sys
from pathlib import Path

from evalsite.workers import BASE_DIR

PACKAGES = ["core", "evalsite", "generation", "annotation", "analysis", "training", "world"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / ".importlinter"), "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_every_dependency_contract_is_kept():
    result = lint_imports(BASE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "kept" in result.stdout.lower()


def test_a_forbidden_import_breaks_the_check(tmp_path):
    """A copy of the tree where annotation imports analysis (an upward edge): the same check must fail on it."""
    for package in PACKAGES:
        shutil.copytree(
            BASE_DIR / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc", "__pycache__", "weights")
        )
    shutil.copy(BASE_DIR / ".importlinter", tmp_path / ".importlinter")
    models = tmp_path / "annotation" / "models.py"
    models.write_text(models.read_text() + "\nfrom analysis import selectors  # deliberately forbidden\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "annotation.models -> analysis.selectors" in result.stdout


def test_the_code_is_linted_and_formatted():
    ruff = str(Path(sys.executable).with_name("ruff"))
    lint = subprocess.run([ruff, "check", "."], cwd=BASE_DIR, capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = subprocess.run(
        [ruff, "format", "--check", "."], cwd=BASE_DIR, capture_output=True, text=True, timeout=300
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
