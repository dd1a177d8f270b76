"""List the sources of a reference's content and open them for one pull.

Mirrors come from ``--mirror``, from ``config.toml`` and from containerd's
``hosts.toml``, in that order, and the origin registry comes last: where the
reference names it, or at the ``server`` of ``hosts.toml``. With
mirrors, each source's round trip is probed (or read from the store's
figures while they are fresh), so the pool can rank them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from apparate.config import Config, Mirror
from apparate.errors import StoreError, UsageError
from apparate.reference import Reference, is_loopback
from apparate.registry.client import Endpoint, InvalidEndpoint, RegistryClient
from apparate.registry.credentials import CredentialStore
from apparate.registry.transport import TransportSettings
from apparate.sources.hosts import HostsFile, read_hosts
from apparate.sources.pool import MIRROR, ORIGIN, Source, SourcePool
from apparate.sources.probe import probe_rtt
from apparate.sources.ranking import Measure
from apparate.store.source_stats import SourceStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """A configured source: where it is, its role, and where it was configured."""

    endpoint: Endpoint
    role: str
    resolve: bool
    configured_in: str
    # TLS, header and timeout settings from hosts.toml (see config.Mirror).
    ca_files: tuple[str, ...] = ()
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    client_certs: tuple[tuple[str, str], ...] = ()
    dial_timeout: float | None = None


def list_sources(
    reference: Reference,
    flag_mirrors: Iterable[str | Mirror],
    config: Config,
    hosts_directory: Path | None = None,
) -> list[SourceSpec]:
    """Return the mirrors of ``reference``'s registry, then its origin.

    ``flag_mirrors`` are URLs of mirrors that serve by digest, or Mirror
    settings, as ``--resolving-mirror`` gives.
    """
    registry = reference.registry
    hosts = read_hosts(registry, hosts_directory)
    found: list[tuple[Mirror, str]] = [
        (Mirror(item), "--mirror")
        if isinstance(item, str)
        else (item, "--resolving-mirror" if item.resolve else "--mirror")
        for item in flag_mirrors
    ]
    where = str(config.path) if config.path else "config.toml"
    found += [(mirror, where) for mirror in config.mirrors_of(registry)]
    found += [(mirror, hosts.path) for mirror in hosts.mirrors]

    specs: list[SourceSpec] = []
    # Where each endpoint sits in specs, so a repeat merges into its first place.
    positions: dict[Endpoint, int] = {}
    for mirror, configured_in in found:
        try:
            endpoint = Endpoint.parse(mirror.url, mirror.override_path)
        except InvalidEndpoint as error:
            raise UsageError(
                f"mirror of {registry} from {configured_in}: {error}", hint=error.hint
            ) from None
        spec = _spec(endpoint, MIRROR, configured_in, mirror)
        position = positions.get(endpoint)
        if position is None:
            positions[endpoint] = len(specs)
            specs.append(spec)
        else:
            # The same mirror listed again, as in --mirror and hosts.toml:
            # its first place counts, and its TLS and header settings add up.
            specs[position] = _merged(specs[position], spec)
    specs.append(_origin_spec(reference, hosts))
    return specs


def _origin_spec(reference: Reference, hosts: HostsFile) -> SourceSpec:
    """Return the registry itself, with the top-level settings of hosts.toml.

    Those settings name no URL unless the file sets ``server``.
    """
    settings = hosts.origin
    if settings is None:
        return SourceSpec(Endpoint(reference.api_host), ORIGIN, True, "reference")
    if not settings.url:
        return _spec(Endpoint(reference.api_host), ORIGIN, "reference", settings)
    # read_hosts checked the URL already, so parsing it cannot fail here.
    endpoint = Endpoint.parse(settings.url, settings.override_path)
    return _spec(endpoint, ORIGIN, hosts.path, settings)


def _spec(
    endpoint: Endpoint, role: str, configured_in: str, mirror: Mirror
) -> SourceSpec:
    return SourceSpec(
        endpoint, role, mirror.resolve, configured_in,
        mirror.ca_files, mirror.skip_verify, mirror.headers, mirror.client_certs,
        mirror.dial_timeout,
    )  # fmt: skip


def open_pool(
    reference: Reference,
    specs: list[SourceSpec],
    settings: TransportSettings,
    credentials: CredentialStore,
    stall_timeout: float,
    stats_path: Path | None = None,
    refresh: bool = False,
) -> SourcePool:
    """Open a client per source and measure them when there is a choice.

    ``refresh`` probes every source, even a lone origin or one whose kept
    round trip is still fresh.
    """
    settings = _with_host_settings(settings, specs)
    measured = len(specs) > 1 or refresh
    loopback = any(_remembers_scheme(spec.endpoint) for spec in specs)
    stats = _open_stats(stats_path) if measured or loopback else None
    try:
        return _open_sources(
            reference, specs, settings, credentials, stall_timeout, stats, refresh
        )
    finally:
        if stats is not None:
            stats.close()


def _credentials_for(
    spec: SourceSpec, reference: Reference, credentials: CredentialStore
) -> CredentialStore:
    """Give the origin, wherever ``server`` puts it, the registry's explicit credentials."""
    if spec.role != ORIGIN or spec.endpoint.host == reference.api_host:
        return credentials
    return credentials.reaching(reference.api_host, spec.endpoint.host)


def _open_sources(
    reference: Reference,
    specs: list[SourceSpec],
    settings: TransportSettings,
    credentials: CredentialStore,
    stall_timeout: float,
    stats: SourceStats | None,
    refresh: bool,
) -> SourcePool:
    plain_first = _plain_http_first(specs, stats)
    sources = []
    for spec in specs:
        mirror = spec.role == MIRROR
        client = RegistryClient(
            reference,
            settings,
            _credentials_for(spec, reference, credentials),
            endpoint=spec.endpoint,
            read_timeout=stall_timeout if mirror or len(specs) > 1 else None,
            plain_http_first=spec.endpoint.host in plain_first,
            headers=dict(spec.headers),
        )
        sources.append(Source(spec.endpoint, spec.role, spec.resolve, client))
    warnings = []
    if len(sources) > 1 or refresh:
        warnings = measure_sources(sources, settings, stats, refresh)
    pool = SourcePool(sources)
    for warning in warnings:
        log.warning("%s", warning)
    return pool


def _with_host_settings(
    settings: TransportSettings, specs: list[SourceSpec]
) -> TransportSettings:
    """Add each source's plain HTTP, TLS and timeout settings, keyed by its host."""
    # A source written with http:// was marked plain HTTP by its user.
    plain = {spec.endpoint.host for spec in specs if spec.endpoint.scheme == "http"}
    ca_files = [(spec.endpoint.host, path) for spec in specs for path in spec.ca_files]
    client_certs = [
        (spec.endpoint.host, certificate, key)
        for spec in specs
        for certificate, key in spec.client_certs
    ]
    connect_timeouts = [
        (spec.endpoint.host, spec.dial_timeout)
        for spec in specs
        if spec.dial_timeout is not None
    ]
    return dataclasses.replace(
        settings,
        insecure_registries=settings.insecure_registries | plain,
        extra_ca_files=settings.extra_ca_files + tuple(ca_files),
        skip_verify=settings.skip_verify
        | {spec.endpoint.host for spec in specs if spec.skip_verify},
        client_certs=settings.client_certs + tuple(client_certs),
        connect_timeouts=settings.connect_timeouts + tuple(connect_timeouts),
    )


def _merged(first: SourceSpec, again: SourceSpec) -> SourceSpec:
    return dataclasses.replace(
        first,
        ca_files=first.ca_files + again.ca_files,
        skip_verify=first.skip_verify or again.skip_verify,
        headers=first.headers + again.headers,
        client_certs=first.client_certs + again.client_certs,
        dial_timeout=(
            first.dial_timeout if first.dial_timeout is not None
            else again.dial_timeout
        ),
    )  # fmt: skip


def _remembers_scheme(endpoint: Endpoint) -> bool:
    """Tell whether the scheme this endpoint responded on is kept for next time."""
    return endpoint.scheme is None and is_loopback(endpoint.host)


def _plain_http_first(specs: list[SourceSpec], stats: SourceStats | None) -> set[str]:
    """Return the hosts to ask over plain HTTP before https.

    These are loopback hosts, whose traffic never leaves the machine
    (containerd's resolver can match them the same way, with
    ``docker.MatchLocalhost``), unless one responded on https before. Other
    hosts allowed plain HTTP are tried over https first on every pull, as
    docker does, so a registry whose TLS failed once is not left on plain
    HTTP.
    """
    hosts = {spec.endpoint.host for spec in specs if _remembers_scheme(spec.endpoint)}
    remembered: dict[str, str | None] = dict.fromkeys(hosts)
    if stats is not None:
        try:
            remembered = {host: stats.scheme(host) for host in hosts}
        except StoreError as error:
            log.warning("source figures not read: %s", error)
    return {host for host, scheme in remembered.items() if scheme != "https"}


def _probe(
    source: Source, settings: TransportSettings
) -> tuple[float | None, str | None]:
    return probe_rtt(source.endpoint, settings, headers=source.client.headers)


def measure_sources(
    sources: list[Source],
    settings: TransportSettings,
    stats: SourceStats | None,
    refresh: bool = False,
) -> list[str]:
    """Fill in each source's figures: kept ones while fresh, else probe now.

    Return a warning for each mirror that no probe reached. Figures that
    cannot be read or kept cost a warning, never the pull. When none can be
    read, every source is probed.
    """
    stale = sources
    if stats is not None:
        try:
            stale = _fill_kept(sources, stats, refresh)
        except StoreError as error:
            # A database that cannot be read is not written either.
            log.warning("source figures not read: %s", error)
            stats = None
    with ThreadPoolExecutor(max(1, len(stale)), thread_name_prefix="probe") as pool:
        probes = list(pool.map(lambda s: _probe(s, settings), stale))
    unreached = []
    for source, (rtt, failure) in zip(stale, probes, strict=True):
        source.measure = Measure(rtt, source.measure.throughput)
        if rtt is None and source.role == MIRROR:
            tags = "does not resolve tags, and " if source.resolve else ""
            unreached.append(
                f"mirror {source.name} could not be reached ({failure}); it "
                f"{tags}serves content only when no other source is left"
                f"{_client_cert_hint(failure)}"
            )
    if stats is not None:
        _keep_rtts(stats, [s for s in stale if s.measure.rtt is not None])
    return unreached


def _keep_rtts(stats: SourceStats, sources: list[Source]) -> None:
    """Keep the probed round trips of ``sources``, warning when they cannot be written."""
    try:
        for source in sources:
            stats.save_rtt(source.name, source.measure.rtt)
    except StoreError as error:
        log.warning("source figures not kept: %s", error)


def _client_cert_hint(failure: str | None) -> str:
    """Return a hint when a TLS alert shows that a client certificate is required.

    Go servers such as distribution's registry send bad_certificate for a
    missing or untrusted client certificate; others send TLS 1.3's
    certificate_required.
    """
    alerts = ("ALERT_BAD_CERTIFICATE", "ALERT_CERTIFICATE_REQUIRED")
    if failure and any(alert in failure for alert in alerts):
        return "; it may require a client certificate, set by client in hosts.toml"
    return ""


def _fill_kept(
    sources: list[Source], stats: SourceStats, refresh: bool
) -> list[Source]:
    """Give each source its kept figures; return those whose round trip is stale."""
    stale = []
    for source in sources:
        source.measure, fresh = stats.measure(source.name)
        if refresh or not fresh:
            stale.append(source)
    return stale


def save_figures(pool: SourcePool, stats_path: Path | None) -> None:
    """Keep the throughputs this pull observed, for the ranking of later pulls.

    The scheme a loopback registry responded on is kept when it was not the
    one tried first, so the next pull tries that one first.
    """
    observed = [(s.name, s.observed_throughput) for s in pool.sources]
    observed = [(name, rate) for name, rate in observed if rate is not None]
    schemes = {
        source.endpoint.host: scheme
        for source in pool.sources
        if _remembers_scheme(source.endpoint)
        and (scheme := source.client.scheme)
        and (scheme == "http") != source.client.plain_http_first
    }
    if not observed and not schemes:
        return
    stats = _open_stats(stats_path)
    if stats is None:
        return
    try:
        for name, rate in observed:
            stats.save_throughput(name, rate)
        for host, scheme in schemes.items():
            stats.save_scheme(host, scheme)
    except StoreError as error:
        log.warning("source figures not kept: %s", error)
    finally:
        stats.close()


@dataclass(frozen=True)
class SourceFigures:
    """One row of ``apparate sources``: a source, its rank and its figures."""

    rank: int
    url: str
    role: str
    resolve: bool
    configured_in: str
    rtt: float | None
    throughput: float | None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def describe_sources(
    reference: Reference,
    flag_mirrors: Iterable[str | Mirror],
    config: Config,
    settings: TransportSettings,
    credentials: CredentialStore,
    stats_path: Path | None,
) -> list[SourceFigures]:
    """Probe every source of ``reference`` now and return them ranked, best first.

    Throughputs are those kept from earlier pulls; the new round trips are
    kept too.
    """
    specs = list_sources(reference, flag_mirrors, config)
    configured = {spec.endpoint: spec.configured_in for spec in specs}
    pool = open_pool(
        reference, specs, settings, credentials, config.stall_timeout, stats_path,
        refresh=True,
    )  # fmt: skip
    with contextlib.closing(pool):
        ranked = pool.ranked()
    return [
        SourceFigures(
            position + 1,
            source.name,
            source.role,
            source.resolve,
            configured[source.endpoint],
            source.measure.rtt,
            source.measure.throughput,
        )
        for position, source in enumerate(ranked)
    ]


def _open_stats(path: Path | None) -> SourceStats | None:
    if path is None:
        return None
    try:
        return SourceStats(path)
    except StoreError as error:
        log.warning("source figures not kept: %s", error)
        return None
