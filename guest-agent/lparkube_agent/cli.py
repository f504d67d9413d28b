"""`lparkube-agent`: the daemon (`serve`) and the commands apps use to register with it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from . import config as configs
from .agent import Agent
from .client import AgentError, call
from .runwrap import default_watch, run
from .version import VERSION

SOCKET_ENV = "LPARKUBE_AGENT_SOCKET"
CLIENT_SOCKET_HELP = (
    f"the agent's registration socket (default ${SOCKET_ENV} or {configs.DEFAULT_SOCKET})"
)


def _socket_option(default: object, help_text: str) -> argparse.ArgumentParser:
    """`--socket`, for use as a parent parser. The main parser's copy holds the value, so the
    option may come before the command; each command's copy has no default (SUPPRESS), so that
    it does not reset a value given before the command."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--socket", default=default, help=help_text)
    return options


def _client_socket(args: argparse.Namespace) -> Path:
    return Path(args.socket or os.environ.get(SOCKET_ENV, configs.DEFAULT_SOCKET))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lparkube-agent",
        description="lparkube guest agent: saves apps on request.",
        parents=[_socket_option(None, "the agent's registration socket (or after the command)")],
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    client = [_socket_option(argparse.SUPPRESS, CLIENT_SOCKET_HELP)]
    sub.add_parser("version", help="print the agent version")

    serve_socket = _socket_option(
        argparse.SUPPRESS, f"registration socket ({configs.DEFAULT_SOCKET})"
    )
    serve = sub.add_parser("serve", help="run the agent daemon", parents=[serve_socket])
    serve.add_argument(
        "--config",
        action="append",
        required=True,
        help="config.json from the operator; repeat it to try several places (first found)",
    )
    serve.add_argument("--state-dir", help=f"registration table dir ({configs.DEFAULT_STATE_DIR})")
    serve.add_argument("--listen", help="HOST:PORT of the HTTP endpoint (config: listen)")
    serve.add_argument("--key-file", help="partition key file (default: 'key' beside config)")
    serve.add_argument("--input-table", help=f"input table ({configs.DEFAULT_INPUT_TABLE})")
    serve.add_argument("--vmcoreinfo", help=f"VMCOREINFO file ({configs.DEFAULT_VMCOREINFO})")
    serve.add_argument("--sysfs", help="where sysfs is (/sys): power, block devices")
    serve.add_argument("--procfs", help="where procfs is (/proc): meminfo, swaps, boot id")
    serve.add_argument("--devfs", help="where devfs is (/dev): the paging disk, kmsg")
    serve.add_argument("--watchdog-device", help="the watchdog self-fencing arms (DEVFS/watchdog)")
    for command in ("mkswap", "swapon", "swapoff"):
        serve.add_argument(f"--{command}", help=f"the {command} command line ({command})")
    serve.add_argument("--log-level", default="INFO")

    reg = sub.add_parser("register", help="register a process with a save method", parents=client)
    reg.add_argument("--name", required=True)
    reg.add_argument("--pid", type=int, default=os.getppid(), help="default: the caller's shell")
    reg.add_argument("--priority", type=int, default=100, help="lower saves first (100)")
    reg.add_argument(
        "--method", required=True, help="Signal, Command, HTTP or UnixSocket (run: SimulatedInput)"
    )
    reg.add_argument(
        "--signal",
        help="Signal: SIGUSR1 (default), SIGUSR2, SIGHUP, SIGWINCH, SIGURG, SIGCHLD or SIGCONT; "
        "sent only if your process catches it",
    )
    reg.add_argument("--command", help="Command: the command line, run as you, with a timeout")
    reg.add_argument("--url", help="HTTP: a loopback URL the agent POSTs to")
    reg.add_argument("--unix-socket", help="UnixSocket: your socket; the agent sends SAVE lines")
    reg.add_argument("--settle-ms", type=int, help="Signal: wait this long after sending")

    unreg = sub.add_parser("unregister", help="remove registrations of a process", parents=client)
    unreg.add_argument("--pid", type=int, default=os.getppid())
    unreg.add_argument("--name")

    listing = sub.add_parser(
        "list", help="show your registrations (root: every user's)", parents=client
    )
    listing.add_argument("--json", action="store_true")

    run = sub.add_parser(
        "run", help="run a terminal program the agent can type save keys into", parents=client
    )
    run.add_argument("--name", help="default: the program name")
    run.add_argument("--priority", type=int, default=100)
    run.add_argument("--keys", help='save keys instead of the input table, e.g. "Esc :w Enter"')
    run.add_argument("--watch", help="file whose rewrite proves the save (default: last operand)")
    run.add_argument("--no-watch", action="store_true", help="wait a settle time instead")
    run.add_argument("--settle-ms", type=int)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "version": lambda a: print(VERSION) or 0,
        "serve": _serve,
        "register": _register,
        "unregister": _unregister,
        "list": _list,
        "run": _run,
    }[args.cmd]
    try:
        return handler(args)
    except AgentError as error:
        print(f"lparkube-agent: {error}", file=sys.stderr)
        return 1


def _abs(value: str | None) -> str | None:
    return None if value is None else os.path.abspath(value)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        "stateDir": _abs(args.state_dir),
        "socket": _abs(args.socket),
        "listen": args.listen,
        "keyFile": _abs(args.key_file),
        "inputTable": _abs(args.input_table),
        "vmcoreinfo": _abs(args.vmcoreinfo),
        "sysfs": _abs(args.sysfs),
        "procfs": _abs(args.procfs),
        "devfs": _abs(args.devfs),
        "watchdogDevice": _abs(args.watchdog_device),
        "mkswap": args.mkswap,
        "swapon": args.swapon,
        "swapoff": args.swapoff,
    }
    found = [Path(p) for p in args.config if Path(p).exists()]
    if not found:
        print(f"lparkube-agent serve: no config file at {', '.join(args.config)}", file=sys.stderr)
        return 2
    try:
        config = configs.load(found[0], overrides)
        agent = Agent(config)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"lparkube-agent serve: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    print(f"lparkube-agent {VERSION} serving {config.partition} on port {agent.port}", flush=True)
    stop.wait()
    agent.stop()
    return 0


def _register(args: argparse.Namespace) -> int:
    app = {
        "name": args.name,
        "pid": args.pid,
        "priority": args.priority,
        "method": args.method,
        "signal": args.signal,
        "command": args.command,
        "url": args.url,
        "socket": _abs(args.unix_socket),
        "settleMillis": args.settle_ms,
    }
    app = {k: v for k, v in app.items() if v is not None}
    answer = call(_client_socket(args), {"op": "register", "app": app})
    reg = answer["application"]
    print(f"registered {reg['name']} (pid {reg['pid']}, priority {reg['priority']}, "
          f"{reg['method']})")  # fmt: skip
    return 0


def _unregister(args: argparse.Namespace) -> int:
    request = {"op": "unregister", "pid": args.pid, "name": args.name}
    answer = call(_client_socket(args), {k: v for k, v in request.items() if v is not None})
    for reg in answer["removed"]:
        print(f"unregistered {reg['name']} (pid {reg['pid']})")
    return 0


def _list(args: argparse.Namespace) -> int:
    apps = call(_client_socket(args), {"op": "list"})["applications"]
    if args.json:
        print(json.dumps(apps, indent=1))
        return 0
    print(f"{'PRIORITY':>8}  {'PID':>7}  {'UID':>5}  {'METHOD':<14}  NAME")
    for app in sorted(apps, key=lambda a: (a["priority"], a["name"])):
        print(
            f"{app['priority']:>8}  {app['pid']:>7}  {app.get('uid', 0):>5}  "
            f"{app['method']:<14}  {app['name']}"
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("lparkube-agent run: give a command after --", file=sys.stderr)
        return 2
    watch = None if args.no_watch else _abs(args.watch) or default_watch(command, os.getcwd())
    app = {
        "name": args.name or os.path.basename(command[0]),
        "priority": args.priority,
        "program": os.path.basename(command[0]),
        "keys": args.keys.split() if args.keys else None,
        "watch": watch,
        "settleMillis": args.settle_ms,
    }
    return run(command, _client_socket(args), {k: v for k, v in app.items() if v is not None})
