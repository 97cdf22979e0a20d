"""The example CI workflow (examples/ci/) installs this project under its PyPI name: the
requirement in its install step names the distribution that this checkout builds, with extras
that exist, and pip resolves that same requirement against the local checkout to a
distribution of that name (``intervene`` on PyPI is an unrelated genomics package)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / ".github" / "workflows" / "circuit-tests.yml"


def install_requirement() -> Requirement:
    """The one requirement of the workflow's pip install lines that installs intervene."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["specs"]["steps"]
    lines = [line for s in steps for line in str(s.get("run", "")).splitlines() if "pip install" in line]
    reqs = [Requirement(m) for line in lines for m in re.findall(r'"([^"]+)"', line)]
    ours = [r for r in reqs if canonicalize_name(r.name).startswith("intervene")]
    assert len(ours) == 1, lines
    return ours[0]


def test_the_workflow_installs_the_distribution_this_checkout_builds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    req = install_requirement()
    assert canonicalize_name(req.name) == canonicalize_name(project["name"]) != "intervene"
    assert req.extras <= set(project["optional-dependencies"])


def test_pip_resolves_the_install_line_against_the_local_checkout(tmp_path: Path) -> None:
    req = install_requirement()
    local = f"{req.name}[{','.join(sorted(req.extras))}] @ {ROOT.as_uri()}"
    report = tmp_path / "report.json"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                          "--ignore-installed", "--quiet", "--report", str(report), local],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    installed = json.loads(report.read_text())["install"]
    assert [canonicalize_name(i["metadata"]["name"]) for i in installed] == [canonicalize_name(req.name)]
    assert set(req.extras) <= set(installed[0]["metadata"].get("provides_extra", []))
