"""Build the agent as one executable zipapp: `python -m lparkube_agent.build OUT.pyz`.

The guest needs only Python 3.9+: cloud-init drops the file in place and the systemd unit runs
it. Only the package's own modules go in (no caches, no tests).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INTERPRETER = "/usr/bin/env python3"
EXCLUDED = {"testing.py", "fakeguest.py"}  # test helpers stay out of the guest


def build(target: Path) -> Path:
    """Write the zipapp to `target` (mode 0755) and return it."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        dest = staging / PACKAGE.name
        dest.mkdir()
        for source in sorted(PACKAGE.glob("*.py")):
            if source.name in EXCLUDED:
                continue
            shutil.copy2(source, dest / source.name)
        (staging / "__main__.py").write_text(
            "import sys\nfrom lparkube_agent.cli import main\nsys.exit(main())\n"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(staging, target, interpreter=INTERPRETER, compressed=True)
    target.chmod(0o755)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lparkube_agent.build OUT.pyz", file=sys.stderr)
        return 2
    print(build(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
