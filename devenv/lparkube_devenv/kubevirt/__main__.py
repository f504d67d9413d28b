"""Run the KubeVirt stand-in in the foreground until interrupted.

python -m lparkube_devenv.kubevirt --kubeconfig K --front-proxy-ca F [--workdir W]
"""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading
from pathlib import Path

from .controller import Settings
from .standin import DEFAULT_NODES, StandIn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lparkube_devenv.kubevirt", description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path, help="admin kubeconfig")
    parser.add_argument("--front-proxy-ca", required=True, type=Path, help="requestheader CA file")
    parser.add_argument("--workdir", type=Path, help="where certificates go (default: a temp dir)")
    parser.add_argument(
        "--nodes", default=",".join(DEFAULT_NODES), help="comma-separated node names"
    )
    parser.add_argument(
        "--eviction-strategy",
        default="None",
        choices=["None", "LiveMigrate", "LiveMigrateIfPossible", "External"],
        help="cluster-wide default evictionStrategy",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubevirt-standin-"))
    names = [n.strip() for n in args.nodes.split(",") if n.strip()]
    settings = Settings(default_eviction_strategy=args.eviction_strategy)
    standin = StandIn(args.kubeconfig, workdir, args.front_proxy_ca, names, settings=settings)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    standin.start()
    print(
        f"KubeVirt stand-in ready: virt-api on 127.0.0.1:{standin.port}, nodes {', '.join(names)}",
        flush=True,
    )
    done.wait()
    standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
