"""Measure a source's round trip with a few requests to its API root."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import httpx

from apparate.registry.client import Endpoint
from apparate.registry.transport import TransportSettings

log = logging.getLogger(__name__)

PROBES = 3
PROBE_SECONDS = 2.0


def probe_timeout(settings: TransportSettings, host: str) -> httpx.Timeout:
    """Return a probe's timeouts: PROBE_SECONDS, or the host's shorter connect timeout."""
    connect = settings.timeout_for(host).connect
    return httpx.Timeout(
        PROBE_SECONDS, connect=min(connect or PROBE_SECONDS, PROBE_SECONDS)
    )


def probe_rtt(
    endpoint: Endpoint,
    settings: TransportSettings,
    probes: int = PROBES,
    headers: Mapping[str, str] | None = None,
) -> tuple[float | None, str | None]:
    """Return the shortest of a few round trips to ``endpoint``, in seconds.

    Any HTTP status counts, a 401 included: it shows the server is up. The
    first request also opens the connection, so later ones are nearer the
    link's own round trip. A round trip of None means no request got a
    response, and the second value then gives the last error. ``headers``
    go with each probe, as hosts.toml's ``header`` tables ask for every
    request to a host.
    """
    client = settings.client(endpoint.host, headers=headers)
    client.timeout = probe_timeout(settings, endpoint.host)
    best: float | None = None
    failure: str | None = None
    try:
        for base_url in endpoint.base_urls(settings):
            url = f"{base_url}{endpoint.api_root}/"
            for _ in range(probes):
                started = time.monotonic()
                try:
                    client.get(url, follow_redirects=False).close()
                except httpx.HTTPError as error:
                    log.debug("probe of %s failed: %s", url, error)
                    failure = str(error) or type(error).__name__
                    break
                elapsed = time.monotonic() - started
                best = elapsed if best is None else min(best, elapsed)
            if best is not None:
                return best, None
    finally:
        client.close()
    return best, failure
