"""Security scan of the rendered Helm chart with kube-score, an independent policy tool.

kube-score (pinned, built from the Go module proxy by hack/build-scan-tools.sh) grades every
check of every workload and Service as CRITICAL, WARNING or OK. It runs with its default checks
plus the optional seccomp check (Pod Security ``restricted`` requires a profile), with the
``kube-score/ignore`` annotations disabled so the chart cannot silence a finding itself.

Run as a script (``make scan``) it prints the findings and the count per severity, and exits 1
when anything is CRITICAL; tests/security/test_chart_scan.py asserts the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

from lparkube_devenv.controlplane import REPO_ROOT, ensure_binaries, find_tool

CHART_DIR = REPO_ROOT / "charts" / "lparkube"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-scan-tools.sh"
KUBE_VERSION = "1.35.4"  # the local control plane's; helm would assume 1.20 otherwise
SEVERITIES = ("CRITICAL", "WARNING", "OK", "SKIPPED")
GRADES = {1: "CRITICAL", 5: "WARNING", 7: "OK", 10: "OK"}  # kube-score's scorecard.Grade
SCAN_FLAGS = (
    "--output-format=json",
    "--color=never",
    "--disable-ignore-checks-annotations",
    "--enable-optional-test=container-seccomp-profile",
    f"--kubernetes-version=v{KUBE_VERSION.rsplit('.', 1)[0]}",
)


class ScanError(RuntimeError):
    """The scanner could not be built or run, or its output was not what kube-score writes."""


@dataclass(frozen=True)
class Result:
    """One check of one object: its severity and, when not OK, what kube-score says."""

    severity: str
    check: str
    object: str
    messages: tuple[str, ...]


def kube_score() -> str:
    """Path of the pinned kube-score, built on first use (a few minutes, then cached)."""
    build = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=1800
    )
    lines = build.stdout.strip().splitlines()
    if build.returncode != 0 or not lines:
        raise ScanError(f"{BUILD_SCRIPT} failed (exit {build.returncode}):\n{build.stderr}")
    return lines[-1]


def version(scanner: str) -> str:
    """kube-score's own report of its version, e.g. ``kube-score version: 1.20.0, ...``."""
    out = subprocess.run([scanner, "version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def render(*flags: str, helm: str | None = None) -> str:
    """``helm template`` of the chart (default values unless ``flags`` say otherwise)."""
    helm = helm or find_tool("helm", ensure_binaries())
    with tempfile.TemporaryDirectory() as home:
        env = {
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "PATH": "/usr/bin:/bin",
        }
        result = subprocess.run(
            [helm, "template", "lparkube", str(CHART_DIR), "--namespace", "lparkube-system",
             "--kube-version", KUBE_VERSION, "--include-crds", *flags],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise ScanError(f"helm template failed:\n{result.stderr}")
    return result.stdout


def scan(manifests: str, scanner: str) -> list[Result]:
    """Every check kube-score ran on ``manifests`` (multi-document YAML), one Result each."""
    proc = subprocess.run(
        [scanner, "score", *SCAN_FLAGS, "-"],
        input=manifests, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # kube-score exits 1 when it found something CRITICAL; anything else is a failure to run.
    if proc.returncode not in (0, 1):
        raise ScanError(f"kube-score exited {proc.returncode}:\n{proc.stderr}")
    try:
        objects = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ScanError(f"kube-score did not print JSON ({exc}):\n{proc.stdout[:2000]}") from exc
    results = []
    for obj in objects or []:
        name = obj["object_name"]
        for check in obj["checks"]:
            severity = "SKIPPED" if check["skipped"] else GRADES.get(check["grade"])
            if severity is None:
                raise ScanError(f"unknown kube-score grade {check['grade']} in {name}")
            messages = tuple(
                f"({c['path']}) {c['summary']}" if c["path"] else c["summary"]
                for c in check["comments"] or []
            )
            results.append(Result(severity, check["check"]["id"], name, messages))
    if (proc.returncode == 1) != any(r.severity == "CRITICAL" for r in results):
        raise ScanError(f"kube-score's exit code {proc.returncode} disagrees with its JSON")
    return sorted(results, key=lambda r: (SEVERITIES.index(r.severity), r.object, r.check))


def counts(results: list[Result]) -> Counter[str]:
    tally = Counter(dict.fromkeys(SEVERITIES, 0))
    tally.update(r.severity for r in results)
    return tally


def summary(results: list[Result]) -> str:
    """``CRITICAL 0, WARNING 1, OK 30, SKIPPED 8`` (checks of objects, by severity)."""
    tally = counts(results)
    return ", ".join(f"{s} {tally[s]}" for s in SEVERITIES)


def findings(results: list[Result], severity: str) -> list[str]:
    """One line per message of every check with ``severity``: check id, object, message."""
    return [
        f"[{r.severity}] {r.check} {r.object}: {message}"
        for r in results
        if r.severity == severity
        for message in r.messages or ("(no message)",)
    ]


def main() -> int:
    scanner = kube_score()
    results = scan(render(), scanner)
    print(f"{version(scanner)}; chart {CHART_DIR.relative_to(REPO_ROOT)} with default values")
    for line in findings(results, "CRITICAL") + findings(results, "WARNING"):
        print(line)
    print(f"checks by severity: {summary(results)}")
    return 1 if counts(results)["CRITICAL"] else 0


if __name__ == "__main__":
    sys.exit(main())
