"""The agent daemon: registration table, save and hibernate runs, storage changes, the paging
device, HTTP endpoint, reports, the self-fencing watchdog, pruning.

`Agent` is importable and can run in-process (tests, benchmarks with many agents): every part
is optional except the HTTP endpoint, and `port` tells where it listens when given port 0.
"""

from __future__ import annotations

import logging
import threading

from . import report as reports
from . import tls
from .config import Config
from .guestfiles import boot_id, memory
from .hibernate import HibernationStore, decode_run
from .httpapi import AgentAPI, AgentHTTPServer
from .inputtable import InputTable
from .journal import Journal
from .methods import Methods
from .paging import Paging
from .registry import Registration, Table
from .regserver import RegistrationServer
from .saves import SaveStore
from .storage import StorageStore
from .storage import decode_run as decode_storage_run
from .terminals import Terminals
from .watchdog import Lease, Watchdog

log = logging.getLogger(__name__)

PRUNE_SECONDS = 2.0
TABLE_FILE = "registrations.json"
JOURNAL_FILE = "saves.json"
HIBERNATE_JOURNAL_FILE = "hibernations.json"
STORAGE_JOURNAL_FILE = "storage.json"


class Agent:
    """One guest agent; `start()` binds everything, `stop()` releases it."""

    def __init__(self, config: Config, input_table: InputTable | None = None) -> None:
        self.config = config
        state_dir = config.state_dir  # None: in memory only (in-process test agents)
        self.table = Table(state_dir / TABLE_FILE if state_dir is not None else None)
        journal = Journal(state_dir / JOURNAL_FILE if state_dir is not None else None)
        self.terminals = Terminals()
        self.methods = Methods(input_table or InputTable.load(config.input_table), self.terminals)
        self.saves = SaveStore(self._registrations, self.methods.save, journal=journal)
        self.paging = Paging(config.files, config.swap_commands)
        self.watchdog = Watchdog(config.watchdog_device)
        self.hibernations = HibernationStore(
            config.files,
            self.paging,
            journal=Journal(
                state_dir / HIBERNATE_JOURNAL_FILE if state_dir is not None else None,
                decode_run,
                "hibernate",
            ),
            busy=self.saves.running,
            on_change=self._report_soon,
            before_suspend=lambda: self.watchdog.disarm("disarmed to hibernate"),
        )
        self.storage = StorageStore(
            config.files,
            journal=Journal(
                state_dir / STORAGE_JOURNAL_FILE if state_dir is not None else None,
                decode_storage_run,
                "storage",
            ),
            on_change=self._report_soon,
        )
        self.api = AgentAPI(
            config.key,
            config.partition,
            self.saves,
            self.report,
            self.hibernations,
            storage=self.storage,
        )
        self.http = AgentHTTPServer(config.listen, self.api, tls.server_context(config.tls))
        self.registration: RegistrationServer | None = None
        if config.socket is not None:
            self.registration = RegistrationServer(config.socket, self.table, self.terminals)
        self.reporter: reports.Reporter | None = None
        self._report_tls = tls.client_context(config.tls)
        if config.operator_url:
            self.reporter = reports.Reporter(self._push, config.report_interval)
            self.table.listeners.append(lambda _removed: self._report_soon())
        self.table.listeners.append(self._forget_terminals)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self.http.server_address[1]

    def start(self) -> None:
        self._spawn(self.http.serve_forever, "http")
        self._spawn(self._prune_loop, "pruner")
        self._spawn(self._enable_paging, "paging")
        if self.registration:
            self.registration.start()
        self.watchdog.start()
        if self.reporter:
            self.reporter.start()
        host = self.config.listen[0]
        log.info("agent for %s listening on %s:%d", self.config.partition, host, self.port)

    def stop(self) -> None:
        self._stop.set()
        self.watchdog.stop()
        if self.reporter:
            self.reporter.stop()
        if self.registration:
            self.registration.stop()
        self.http.shutdown()
        self.http.server_close()
        self.terminals.close_all()

    def report(self) -> dict:
        apps = [r.summary() for r in self._registrations()]
        body = reports.build_report(self.config.vmcoreinfo, apps, self.config.files.proc)
        guest = {
            "bootId": boot_id(self.config.files),
            "memory": memory(self.config.files),
            "paging": self.paging.report(),
            "hibernation": self.hibernations.last(),
            "storage": self.storage.last(),
            "watchdog": self.watchdog.report(),
        }
        body.update({k: v for k, v in guest.items() if v is not None})  # all optional
        return body

    def _report_soon(self) -> None:
        if self.reporter:
            self.reporter.poke()

    def _enable_paging(self) -> None:
        try:
            self.paging.enable()
        except Exception:
            log.exception("enabling the paging device failed")
        self._report_soon()

    def _registrations(self) -> list[Registration]:
        self.table.prune()
        return self.table.entries()

    def _push(self) -> float | None:
        """One report; the delay its answer's lease asks to be renewed in, if any."""
        assert self.config.operator_url
        sent_at = self.watchdog.clock()  # a lease counts from before the report leaves
        lease = reports.push(
            self.config.operator_url,
            self.config.key,
            self.config.partition,
            self.report(),
            self._report_tls,
        )
        self.watchdog.answered(lease, sent_at)
        return lease.renew if isinstance(lease, Lease) else None

    def _forget_terminals(self, removed: list[Registration]) -> None:
        for reg in removed:
            self.terminals.detach(reg.key)

    def _prune_loop(self) -> None:
        while not self._stop.wait(PRUNE_SECONDS):
            try:
                self.table.prune()
            except Exception:
                log.exception("pruning the registration table failed")

    def _spawn(self, target, name: str) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
