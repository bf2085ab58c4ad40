"""The workflow files keep Snakemake's canonical layout (snakefmt), as the Python keeps ruff's.

A reformatted rule is a diff nobody reviews, so the check runs with the tests instead of relying
on everyone running the formatter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def _tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def test_workflow_files_are_snakefmt_formatted() -> None:
    files = ["Snakefile", *sorted(str(p) for p in (REPO / "workflow").rglob("*.smk"))]
    result = subprocess.run(
        [_tool("snakefmt"), "--check", *files], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_ruff_clean() -> None:
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [_tool("ruff"), *args, "src", "tests", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_has_no_findings() -> None:
    # The workflow as Snakemake's linter sees it: rule files hold rules only (input functions
    # in common.smk), every command's config path comes through params.
    result = subprocess.run(
        [_tool("snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
