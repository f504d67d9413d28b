"""Kubernetes client configuration, shared by kopf's login and lparkube's own API calls.

One loader means kopf and the Lease client always talk to the same cluster as the same user.
"""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


def load_configuration(kubeconfig: Path | None = None) -> client.Configuration:
    """Load an explicit kubeconfig, else the pod's service account, else $KUBECONFIG/~/.kube."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """A synchronous API client for the configured cluster; the caller closes it."""
    return client.ApiClient(load_configuration(kubeconfig))


def authorization(configuration: client.Configuration) -> tuple[str | None, str | None]:
    """The (scheme, credentials) of the Authorization header the configuration would send.

    Token sources (static, file, exec plugins) all surface through ``get_api_key_with_prefix``;
    newer clients keep the token under ``BearerToken``, older ones under ``authorization``.
    """
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    if not header:
        return None, None
    scheme, _, credentials = header.partition(" ")
    return (scheme, credentials) if credentials else (None, scheme)
