"""The layers hold: runtime/ imports none of workflows/, approvals/ and sandbox/; sandbox/ imports nothing of
Steward (import-linter contracts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is part of the test dependencies"
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_every_top_level_folder_explains_itself() -> None:
    for folder in ("runtime", "workflows", "policies", "approvals", "sandbox", "tests", "deploy", "bench"):
        readme = ROOT / folder / "README.md"
        assert readme.is_file() and len(readme.read_text().strip()) > 80, folder
