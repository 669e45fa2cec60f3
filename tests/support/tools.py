"""The command-line tools the deployment tests run (hadolint, kubernetes-validate, ...).

A missing tool skips the test locally, with the reason shown by `-ra`; with CI=true it
fails it instead, as a missing database does (tests/databases.py `require_backend`):
CI must run every validation, never report a skip as a pass.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def require_tool(name: str) -> str:
    """The path of `name` (beside this interpreter first, then on PATH), else skip or fail."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (pip install -e '.[test]' installs the Python ones)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: deployment checks must run, not skip)", pytrace=False)
    pytest.skip(reason)
