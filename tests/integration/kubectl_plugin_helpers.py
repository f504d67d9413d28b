"""The installed kubectl plugin as a user runs it (shared by the plugin's integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXECUTABLE = Path(sys.executable).with_name("kubectl-lparkube")


def plugin_env(kubeconfig: Path | None = None) -> dict[str, str]:
    """The environment of a user whose PATH has the installed plugin (the venv's bin)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PATH"] = f"{EXECUTABLE.parent}{os.pathsep}{env.get('PATH', '')}"
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return env


def run_plugin(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed executable with ``--kubeconfig``, run to its end."""
    argv = [str(EXECUTABLE), *args, "--kubeconfig", str(kubeconfig)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=plugin_env(), check=False
    )
