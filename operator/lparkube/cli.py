"""The ``lparkube`` command: ``run`` starts the operator; ``version`` and ``--version`` print its
version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from lparkube import logs, runtime
from lparkube.config import (
    AGENT_GATEWAY_PORT,
    AGENT_GATEWAY_SERVICE,
    DEFAULT_IDENTITY_SECRET,
    DEFAULT_LEASE_NAME,
    LeaseConfig,
    Settings,
    default_gateway_url,
    default_identity,
    default_lease_namespace,
    parse_address,
    parse_labels,
)
from lparkube.version import version

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lparkube", description="Resilience operator for KubeVirt virtual machines."
    )
    parser.add_argument("--version", action="version", version=version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="print the version and exit")
    run = commands.add_parser("run", help="run the operator in the foreground")
    _add_run_arguments(run)
    return parser


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", dest="namespaces", action="append", default=[], metavar="NS",
        help="watch this namespace; repeat for more (default: all namespaces)",
    )  # fmt: skip
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    run.add_argument("--health-address", default=":8080", help="/healthz and /readyz; 0: off")
    run.add_argument("--metrics-address", default=":9090", help="/metrics; 0: off")
    run.add_argument(
        "--agent-gateway-address", default=f":{AGENT_GATEWAY_PORT}",
        help="where guest agents POST reports (served while leading); 0: off",
    )  # fmt: skip
    run.add_argument(
        "--agent-gateway-url",
        help="the gateway URL written into each partition's agent config (default: "
        f"https://{AGENT_GATEWAY_SERVICE}.<lease namespace>.svc:{AGENT_GATEWAY_PORT})",
    )
    run.add_argument(
        "--identity-secret", default=DEFAULT_IDENTITY_SECRET,
        help="Secret in the lease namespace holding the root of every agent key and TLS "
        "identity; made on first start (default: %(default)s)",
    )  # fmt: skip
    network = run.add_argument_group("agent network policy")
    network.add_argument(
        "--agent-network-policy", action="store_true",
        help="keep a NetworkPolicy per Partition: only the operator's pods reach the guest "
        "agent's port (needs --operator-pod-labels)",
    )  # fmt: skip
    network.add_argument(
        "--operator-pod-labels", default="", metavar="KEY=VALUE,...",
        help="the labels of the operator's pods (in the lease namespace), which those "
        "policies admit",
    )  # fmt: skip
    lease = run.add_argument_group("leader election")
    lease.add_argument(
        "--lease-namespace", default=default_lease_namespace(),
        help="namespace of the Lease (default: $POD_NAMESPACE or lparkube-system)",
    )  # fmt: skip
    lease.add_argument("--lease-name", default=DEFAULT_LEASE_NAME)
    lease.add_argument("--identity", default=default_identity(), help="default: hostname-pid")
    lease.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    lease.add_argument("--lease-renew-interval", type=float, default=5.0, metavar="SECONDS")
    lease.add_argument("--lease-renew-deadline", type=float, default=10.0, metavar="SECONDS")
    lease.add_argument("--lease-retry-interval", type=float, default=2.0, metavar="SECONDS")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    run.add_argument("--log-format", choices=("json", "text"), default="json")


def settings_from(args: argparse.Namespace) -> Settings:
    """Turn parsed ``run`` arguments into Settings; raises ValueError on bad values."""
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        raise ValueError(f"--kubeconfig {args.kubeconfig}: no such file")
    operator_pod_labels = parse_labels(args.operator_pod_labels)
    if args.agent_network_policy and not operator_pod_labels:
        raise ValueError("--agent-network-policy needs --operator-pod-labels")
    lease = LeaseConfig(
        namespace=args.lease_namespace,
        name=args.lease_name,
        identity=args.identity,
        duration=args.lease_duration,
        renew_interval=args.lease_renew_interval,
        renew_deadline=args.lease_renew_deadline,
        retry_interval=args.lease_retry_interval,
    )
    return Settings(
        lease=lease,
        kubeconfig=args.kubeconfig,
        namespaces=tuple(dict.fromkeys(args.namespaces)),
        health_address=parse_address(args.health_address),
        metrics_address=parse_address(args.metrics_address),
        log_level=args.log_level,
        log_format=args.log_format,
        agent_gateway_address=parse_address(args.agent_gateway_address),
        agent_gateway_url=args.agent_gateway_url or default_gateway_url(args.lease_namespace),
        identity_secret=args.identity_secret,
        agent_network_policy=args.agent_network_policy,
        operator_pod_labels=operator_pod_labels,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(version())
        return 0
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2
    return run(settings)


def run(settings: Settings) -> int:
    """Configure logging, then run the operator on a fresh event loop until it stops."""
    logs.setup_logging(settings.log_level, settings.log_format)
    logger = logging.getLogger("lparkube")
    logger.info(
        "Starting lparkube %s as %s",
        version(),
        settings.identity,
        extra={"namespaces": list(settings.namespaces) or "*"},
    )
    code = asyncio.run(runtime.run(settings))
    logger.info("lparkube stopped", extra={"exitCode": code})
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
