"""kopf handlers of lparkube: importing this package registers all of them.

Each resource's controller is one module here; add it to the imports at the bottom. Handlers
read the run's settings as ``memo.config`` (a :class:`lparkube.config.Settings`) and record
metrics with :func:`lparkube.metrics.instrumented`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from typing import Any

import kopf

from lparkube.adapters import kubeconfig
from lparkube.adapters.guest_agent import AgentClient
from lparkube.adapters.kube import Kube
from lparkube.adapters.root_secret import operator_credentials
from lparkube.api.resource import GROUP
from lparkube.config import (
    DEFAULT_IDENTITY_SECRET,
    DEFAULT_LEASE_NAMESPACE,
    Settings,
    default_gateway_url,
)
from lparkube.controllers.partition_objects import KeySecrets

FINALIZER = f"{GROUP}/finalizer"


def run_config(memo: Any) -> Settings | None:
    """The settings ``lparkube run`` started with, or None under a bare ``kopf run``."""
    config = getattr(memo, "config", None)
    return config if isinstance(config, Settings) else None


class StatuslessDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, built without deep-copying ``status`` first.

    kopf drops status and managedFields from an object's essence anyway, but copies the whole
    body before it does; a SaveEvent's status holds up to 1,500 results (and managedFields a
    key for each), and that copy on every watch event stalls the event loop the fan-out runs
    on.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        fields = list(extra_fields or ())
        if any(_field_root(f) == "status" for f in fields):  # a handler watches a status field
            return super().build(body=body, extra_fields=fields)
        meta = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
        slim = {k: v for k, v in body.items() if k != "status"}
        return super().build(body=kopf.Body({**slim, "metadata": meta}), extra_fields=fields)


def _field_root(field: Any) -> str:
    """The top-level key of a kopf field spec (``"a.b"`` or ``("a", "b")``)."""
    if isinstance(field, str):
        return field.split(".", 1)[0]
    return str(field[0]) if field else ""


@kopf.on.startup()
def operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Brand kopf's finalizer, annotations and events as lparkube's, not kopf's defaults."""
    config = run_config(memo)
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = StatuslessDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Handler warnings and failures become Events, so `kubectl describe` shows them.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "lparkube"
    settings.posting.event_name_prefix = "lparkube-"
    if config is not None:
        settings.posting.reporting_instance = config.identity
    # Reconnect watches well before intermediaries (LBs, proxies) drop idle streams.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


@kopf.on.startup()
async def operator_clients(memo: Any, **_: Any) -> None:
    """One Kubernetes client (``memo.kube``), one guest-agent client (``memo.agents``) and
    one writer of key Secrets (``memo.key_secrets``) shared by every handler, so connections,
    thread pools and TLS contexts are not made per call. The operator's credentials come
    from ``lparkube run`` (``memo.credentials``), or are loaded here under a bare kopf run."""
    config = run_config(memo)
    memo.kube = Kube.connect(config.kubeconfig if config else None)
    credentials = getattr(memo, "credentials", None)
    if credentials is None:  # a bare `kopf run`; `lparkube run` brings them
        namespace = config.lease.namespace if config else DEFAULT_LEASE_NAMESPACE
        secret = config.identity_secret if config else DEFAULT_IDENTITY_SECRET
        credentials = await operator_credentials(memo.kube, namespace, secret)
        memo.credentials = credentials
    memo.agents = AgentClient(credentials)
    memo.key_secrets = KeySecrets(credentials.identity, gateway_url(config))


def gateway_url(config: Settings | None) -> str:
    """The agent gateway's URL written into every agent's config."""
    if config is None:
        return default_gateway_url(None)
    return config.agent_gateway_url or default_gateway_url(config.lease.namespace)


@kopf.on.startup()
def operator_state(memo: Any, **_: Any) -> None:
    """What handlers share across objects, made once: kopf hands each object a shallow copy of
    this memo, so every copy refers to these same containers."""
    memo.agents_connected = set()  # (namespace, name) of Partitions whose agent is connected
    memo.agents_lost = set()  # ... whose VM runs but whose agent went silent
    memo.profile_wakers = {}  # ConditionProfile name -> the Event that wakes its evaluation
    memo.evacuation_saves = set()  # (namespace, SaveEvent name) made or met for an evacuation
    memo.storage_locks = weakref.WeakValueDictionary()  # (namespace, name) -> a Partition's lock
    memo.reconcile_locks = weakref.WeakValueDictionary()  # ... its reconcile's (partition.py)


@kopf.on.cleanup()
async def operator_cleanup(memo: Any, **_: Any) -> None:
    agents: AgentClient | None = getattr(memo, "agents", None)
    if agents is not None:
        await agents.close()
    kube: Kube | None = getattr(memo, "kube", None)
    if kube is not None:
        await asyncio.to_thread(kube.close)


@kopf.on.login()
def operator_login(memo: Any, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Log in exactly as the Lease client does, so ``--kubeconfig`` applies to both."""
    config = run_config(memo)
    client_config = kubeconfig.load_configuration(config.kubeconfig if config else None)
    scheme, token = kubeconfig.authorization(client_config)
    logging.getLogger(__name__).debug("Logging in to %s", client_config.host)
    return kopf.ConnectionInfo(
        server=client_config.host,
        ca_path=client_config.ssl_ca_cert,
        insecure=not client_config.verify_ssl,
        username=client_config.username or None,
        password=client_config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=client_config.cert_file,
        private_key_path=client_config.key_file,
        trust_env=settings.networking.trust_env,
    )


# Controllers: importing each module registers its handlers.
from lparkube.controllers import (  # noqa: E402, F401
    agent_gateway,
    conditionprofile,
    consistency_images,
    evacuation,
    failover,
    hibernationimage,
    networkpolicy,
    partition,
    partition_paging,
    partition_storage,
    remoterestart,
    saveevent,
    vioscluster,
)
