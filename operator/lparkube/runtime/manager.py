"""The operator process: probes and metrics always, kopf handlers only while leading.

Like controller-runtime's manager: a replica that loses its Lease exits non-zero so its
Deployment restarts it as a standby; a replica asked to stop releases the Lease on the way
out so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import kopf
from aiohttp import web
from kubernetes.client.exceptions import ApiException

import lparkube.controllers  # noqa: F401  (importing registers the kopf handlers)
from lparkube import health, metrics
from lparkube.adapters import kubeconfig
from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube.adapters.kube import Kube
from lparkube.adapters.lease import LeaseNamespaceMissingError, LeaseStore
from lparkube.adapters.root_secret import RootSecretError, operator_credentials
from lparkube.config import Settings
from lparkube.controllers import agent_gateway
from lparkube.domain.partition_directory import PartitionDirectory
from lparkube.runtime.election import LeaderElector, LeadershipLostError, OnChange
from lparkube.version import version

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until a signal or ``stop`` (exit 0), a lost Lease or a failure (exit 1)."""
    stop = asyncio.Event() if stop is None else stop
    readiness = health.Readiness(stopping=stop)
    metrics.set_build_info(version())
    metrics.set_leader(settings.identity, False)
    try:
        api = kubeconfig.api_client(settings.kubeconfig)
    except Exception as exc:
        logger.error("Cannot load Kubernetes client configuration: %s", exc)
        return EXIT_FAILURE
    with _signals_set(stop), contextlib.closing(api):
        try:
            runners = await _start_servers(settings, readiness)
        except OSError as exc:
            logger.error("Cannot listen for probes or metrics: %s", exc)
            return EXIT_FAILURE
        try:
            store = LeaseStore(api, settings.lease.namespace, settings.lease.name)
            elector = LeaderElector(store, settings.lease, _leader_tracker(settings, readiness))
            return await _lead(settings, elector, readiness, stop)
        except LeaseNamespaceMissingError as exc:
            logger.error("%s", exc)
            return EXIT_FAILURE
        finally:
            for runner in runners:
                await runner.cleanup()


async def _lead(
    settings: Settings, elector: LeaderElector, readiness: health.Readiness, stop: asyncio.Event
) -> int:
    """Wait for the Lease, run kopf while holding it, then release it if still ours."""
    if not await elector.acquire(stop):
        logger.info("Stopped while standing by")
        return EXIT_OK
    stop_renewing = asyncio.Event()
    renewal = asyncio.create_task(elector.hold(stop_renewing), name="lparkube lease renewal")
    renewal.add_done_callback(lambda _: stop.set())
    try:
        code = await _operate_with_gateway(settings, readiness, stop, renewal)
    finally:
        stop_renewing.set()  # renew until kopf is down, then hand the Lease back
        lost = await _leadership_lost(renewal)
        if not lost:
            await elector.release()
    return EXIT_FAILURE if lost else code


async def _operate_with_gateway(
    settings: Settings, readiness: health.Readiness, stop: asyncio.Event, renewal: asyncio.Task
) -> int:
    """The agent gateway serves only while leading: one writer of agent status, one nonce
    cache for every report, and the Service (which routes by /readyz) reaches only us. It
    knows Partitions from the directory kopf's Partition watch keeps (through the memo)."""
    directory = PartitionDirectory()
    try:
        credentials = await _credentials(settings)
    except (ApiException, RootSecretError) as exc:
        where = f"{settings.lease.namespace}/{settings.identity_secret}"
        logger.error("Cannot load the operator's root secret %s: %s", where, exc)
        return EXIT_FAILURE
    try:
        gateway = await agent_gateway.start(settings, credentials, directory)
    except OSError as exc:
        logger.error("Cannot listen for guest agent reports: %s", exc)
        return EXIT_FAILURE
    try:
        return await _operate(settings, credentials, readiness, stop, renewal, directory=directory)
    finally:
        if gateway is not None:
            await gateway.stop()


async def _credentials(settings: Settings) -> OperatorCredentials:
    """The operator's identity (its root secret, made on first start) and a fresh certificate,
    shared by the agent gateway and kopf's handlers."""
    kube = Kube.connect(settings.kubeconfig, workers=1)
    try:
        return await operator_credentials(kube, settings.lease.namespace, settings.identity_secret)
    finally:
        kube.close()


async def _operate(
    settings: Settings,
    credentials: OperatorCredentials,
    readiness: health.Readiness,
    stop: asyncio.Event,
    renewal: asyncio.Task,
    *,
    directory: PartitionDirectory,
) -> int:
    """Run kopf until ``stop``; bound its shutdown when the Lease was lost."""
    operator = asyncio.create_task(
        _kopf(settings, credentials, directory, readiness, stop), name="lparkube kopf"
    )
    await asyncio.wait({operator, renewal}, return_when=asyncio.FIRST_COMPLETED)
    if renewal.done() and not operator.done():
        # Another replica may lead once our lease expires: stop before that.
        grace = settings.lease.duration - settings.lease.renew_deadline
        await asyncio.wait({operator}, timeout=grace)
        operator.cancel()
    try:
        await operator
    except asyncio.CancelledError:
        logger.error("kopf did not stop in time after the Lease was lost")
    except Exception:
        logger.exception("kopf failed")
        return EXIT_FAILURE
    if stop.is_set():
        return EXIT_OK
    logger.error("kopf stopped on its own")
    return EXIT_FAILURE


async def _kopf(
    settings: Settings,
    credentials: OperatorCredentials,
    directory: PartitionDirectory,
    readiness: health.Readiness,
    stop: asyncio.Event,
) -> None:
    """kopf.operator, but with our signal handlers: stopping must go through the Lease logic."""
    kopf_settings = kopf.OperatorSettings()
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(
        settings=kopf_settings,
        clusterwide=settings.clusterwide,
        namespaces=settings.namespaces,
        standalone=True,  # our Lease, not kopf peering, decides who runs handlers
        stop_flag=stop,
        ready_flag=readiness.kopf_ready,
        memo=kopf.Memo(config=settings, credentials=credentials, partition_directory=directory),
    )
    _install_signal_handlers(stop)  # spawn_tasks took SIGINT/SIGTERM over
    try:
        await kopf.run_tasks(tasks, ignored=existing)
    finally:
        # The sync-handler thread pool would otherwise linger until interpreter exit.
        await asyncio.to_thread(kopf_settings.execution.executor.shutdown, wait=True)


async def _leadership_lost(renewal: asyncio.Task) -> bool:
    """Await the renewal task; True when it ended because the Lease was lost."""
    try:
        await renewal
    except LeadershipLostError as exc:
        logger.error("Leadership lost: %s", exc)
        return True
    except asyncio.CancelledError:
        return False
    except Exception:
        logger.exception("Lease renewal failed")
        return True
    return False


async def _start_servers(settings: Settings, readiness: health.Readiness) -> list[web.AppRunner]:
    """Listen before leader election, so standbys answer probes too; all or nothing."""
    wanted = [
        (settings.health_address, health.health_app(readiness), "health probes"),
        (settings.metrics_address, metrics.metrics_app(), "metrics"),
    ]
    runners: list[web.AppRunner] = []
    try:
        for address, app, name in wanted:
            if address is not None:
                runners.append(await health.serve(app, address, name))
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners


def _leader_tracker(settings: Settings, readiness: health.Readiness) -> OnChange:
    """Keep /readyz and the lparkube_leader gauge in step with the elector."""

    def on_change(leading: bool, holder: str) -> None:
        readiness.leader, readiness.holder = leading, holder or None
        metrics.set_leader(settings.identity, leading)

    return on_change


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, _on_signal, sig, stop)


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        logger.info("Received %s while already stopping", sig.name)
    else:
        logger.info("Received %s, stopping", sig.name)
    stop.set()


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """Route SIGINT/SIGTERM to ``stop`` for the whole run, and restore defaults after."""
    _install_signal_handlers(stop)
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
