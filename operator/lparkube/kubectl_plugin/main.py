"""``kubectl-lparkube``: parse the command line into a verb and its options, run it, and turn
every failure into ``error: ...`` on stderr and an exit code (``verb``: 0, 1, 2)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

from lparkube.kubectl_plugin.cluster import connect
from lparkube.kubectl_plugin.verb import (
    EXIT_CODES_HELP,
    INTERRUPTED,
    Group,
    PluginError,
    Session,
    Verb,
    duration,
)
from lparkube.kubectl_plugin.verbs import VERBS
from lparkube.version import version

PROG = "kubectl lparkube"
WIDTH = 79


def wrapped(text: str) -> str:
    return textwrap.fill(text, WIDTH)


def build_parser(verbs: Sequence[Verb | Group] = VERBS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=wrapped(
            "Save, hibernate, resume and restart lparkube Partitions (KubeVirt VMs), and show "
            "where they stand and how they fail over. Run 'kubectl lparkube VERB --help' for a "
            "verb's options."
        ),
        epilog=wrapped(EXIT_CODES_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version())
    add_verbs(parser, verbs, "verb")
    return parser


def add_verbs(parser: argparse.ArgumentParser, verbs: Sequence[Verb | Group], dest: str) -> None:
    """A sub-command for each verb; a group's verbs one level below its name."""
    commands = parser.add_subparsers(dest=dest, required=True, metavar="VERB")
    for verb in verbs:
        if isinstance(verb, Group):
            group = commands.add_parser(
                verb.name,
                help=verb.summary,
                description=wrapped(verb.description),
                epilog=wrapped(EXIT_CODES_HELP),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            add_verbs(group, verb.verbs, f"{dest}_{verb.name}")
            continue
        sub = commands.add_parser(
            verb.name,
            help=verb.summary,
            description=wrapped(verb.description),
            epilog=f"examples:\n{verb.examples}\n\n{wrapped(EXIT_CODES_HELP)}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        verb.add_arguments(sub)
        add_common_arguments(sub, verb)
        sub.set_defaults(verb_spec=verb, verb_parser=sub)


def add_common_arguments(parser: argparse.ArgumentParser, verb: Verb) -> None:
    """The options every verb takes, named as kubectl names them."""
    common = parser.add_argument_group("cluster options")
    common.add_argument(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="the namespace (default: the kubeconfig context's, else default)",
    )
    common.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    common.add_argument(
        "--context", metavar="NAME", help="the kubeconfig context (default: the current one)"
    )
    if verb.waits:
        common.add_argument(
            "--no-wait",
            dest="wait",
            action="store_false",
            help="return once the request is made, without waiting for the outcome",
        )
        common.add_argument("--timeout", type=duration, metavar="DURATION", help=verb.timeout_help)
    else:
        common.add_argument(
            "--timeout",
            type=duration,
            metavar="DURATION",
            help="how long each request to the API server may take (default 30s)",
        )


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)  # a usage error exits 2 here
    verb: Verb = args.verb_spec
    problem = verb.check(args)
    if problem:
        args.verb_parser.error(problem)
    request_timeout = None if verb.waits else args.timeout
    session = Session(
        connect=lambda: connect(args.kubeconfig, args.context, request_timeout),
        namespace_flag=args.namespace,
        wait=getattr(args, "wait", False),
        timeout=args.timeout if verb.waits else None,
        out=out,
        err=err,
    )
    try:
        return verb.run(session, args)
    except PluginError as error:
        print(f"error: {error.message}", file=err)
        return error.code
    except KeyboardInterrupt:
        print("interrupted: the operation goes on in the cluster", file=err)
        return INTERRUPTED
