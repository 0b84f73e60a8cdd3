"""Import directions (DESIGN.md §3): ai_core knows nothing of daemon or
dicom_out; dicom_out knows nothing of daemon; the listener side never imports
torch (a GPU crash must not stop intake)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _imports(package: str) -> list[tuple[Path, str]]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path, node.module))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("ai_core", ("daemon", "dicom_out")), ("dicom_out", ("daemon",))],
    ids=["ai_core", "dicom_out"],
)
def test_import_directions(package: str, forbidden: tuple[str, ...]) -> None:
    bad = [
        f"{path.relative_to(REPO)} imports {name}"
        for path, name in _imports(package)
        if name.split(".")[0] in forbidden
    ]
    assert bad == []


def test_serving_process_does_not_import_torch() -> None:
    code = (
        "import sys, daemon.serve, daemon.dicom.listener, daemon.ops.http, daemon.cli;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
