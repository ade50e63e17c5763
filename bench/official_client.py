"""The official client for the benchmarks' own watches (its Watch helper): the operator no longer carries
it, so the benchmarks make their own ApiClient from the kubeconfig, with the benchmark's User-Agent (the
audit log tells the benchmark's requests from the operator's by it)."""

from __future__ import annotations

import functools

from kubernetes import client, config

from api_requests import CLIENT_AGENT


@functools.cache
def shared() -> client.ApiClient:
    api = config.new_client_from_config()  # type: ignore[no-untyped-call]
    api.user_agent = CLIENT_AGENT
    return api
