"""Where mirrors come from: config.toml, hosts.toml, --mirror and their URLs."""

from __future__ import annotations

import tomllib

import pytest

from apparate.config import Config, Mirror, load_config, parse_config, parse_size
from apparate.errors import UsageError
from apparate.reference import Reference
from apparate.registry.client import Endpoint
from apparate.sources.hosts import parse_hosts, read_hosts_mirrors
from apparate.sources.selection import list_sources

ENDPOINT_CASES = {
    "host only": ("https://mirror.example", False, Endpoint("mirror.example", "https")),
    "trailing slash": ("http://m:5000/", False, Endpoint("m:5000", "http")),
    "no scheme": ("m:5000", False, Endpoint("m:5000", None)),
    "path prefix": ("https://m/cache", False, Endpoint("m", "https", "/cache/v2")),
    "path ending in v2": (
        "https://m/cache/v2",
        False,
        Endpoint("m", "https", "/cache/v2"),
    ),
    "override path": ("https://m/api", True, Endpoint("m", "https", "/api")),
}


@pytest.mark.parametrize("url, override, expected", ENDPOINT_CASES.values(),
                         ids=ENDPOINT_CASES)  # fmt: skip
def test_endpoint_parse(url, override, expected):
    assert Endpoint.parse(url, override) == expected


@pytest.mark.parametrize("url", ["ftp://m", "https://", "https:///v2"])
def test_endpoint_parse_rejects(url):
    with pytest.raises(ValueError):
        Endpoint.parse(url)


def test_endpoint_names():
    assert str(Endpoint("m:5000")) == "m:5000"
    assert str(Endpoint("m", "https", "/cache/v2")) == "https://m/cache"


CONFIG = """
into = "containerd"
max_store_size = "1.5G"
stall_timeout = 3

[registries."docker.io"]
mirrors = ["https://m1.example/", { url = "http://127.0.0.1:5001", resolve = true }]
"""


def test_parse_config():
    config = parse_config(tomllib.loads(CONFIG))

    assert config.into == "containerd"
    assert config.max_store_size == int(1.5 * (1 << 30))
    assert config.stall_timeout == 3.0
    assert config.mirrors_of("docker.io") == (
        Mirror("https://m1.example"),
        Mirror("http://127.0.0.1:5001", resolve=True),
    )
    assert config.mirrors_of("quay.io") == ()


BAD_CONFIGS = {
    "unknown setting": 'colour = "blue"',
    "negative stall": "stall_timeout = -1",
    "size word": 'max_store_size = "big"',
    "mirror without url": '[registries."r"]\nmirrors = [{ resolve = true }]',
    "mirror scheme": '[registries."r"]\nmirrors = ["ftp://m"]',
    "unknown mirror key": '[registries."r"]\nmirrors = [{ url = "https://m", x = 1 }]',
}


@pytest.mark.parametrize("text", BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_parse_config_rejects(text):
    with pytest.raises(UsageError):
        parse_config(tomllib.loads(text))


def test_load_config_missing_file_gives_defaults(tmp_path):
    config = load_config(tmp_path / "none.toml")

    assert config.mirrors == {}
    assert config.into is None


def test_load_config_invalid_toml_names_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("into = ")

    with pytest.raises(UsageError, match="config.toml"):
        load_config(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1000", 1000),
        ("500M", 500 << 20),
        ("2g", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("4 KB", 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


HOSTS = """
server = "https://registry-1.docker.io"

[host."https://resolver.example"]
  capabilities = ["pull", "resolve"]

[host."content.example:5000"]
  capabilities = ["pull"]

[host."https://push-only.example"]
  capabilities = ["push"]

[host."https://api.example/custom"]
  override_path = true
"""


def test_parse_hosts():
    mirrors = parse_hosts(tomllib.loads(HOSTS), "hosts.toml")

    assert mirrors == [
        Mirror("https://resolver.example", resolve=True),
        Mirror("https://content.example:5000", resolve=False),
        Mirror("https://api.example/custom", resolve=True, override_path=True),
    ]


TLS_HOSTS = """
[host."https://mirror.example"]
  ca = "mirror-ca.crt"
  skip_verify = false
  [host."https://mirror.example".header]
    X-Mirror-Token = "abc"
    Accept-Language = ["en", "fr"]

[host."https://lab.example"]
  ca = ["/etc/lab/root.crt", "lab/intermediate.crt"]
  skip_verify = true
"""


def test_parse_hosts_tls_and_headers(tmp_path):
    mirror, lab = parse_hosts(tomllib.loads(TLS_HOSTS), "hosts.toml", tmp_path)

    assert mirror.ca_files == (str(tmp_path / "mirror-ca.crt"),)
    assert not mirror.skip_verify
    assert mirror.headers == (("X-Mirror-Token", "abc"), ("Accept-Language", "en, fr"))
    assert lab.ca_files == ("/etc/lab/root.crt", str(tmp_path / "lab/intermediate.crt"))
    assert lab.skip_verify


@pytest.mark.parametrize(
    "entry, words",
    [
        ("ca = 5", "ca must be a path"),
        ('skip_verify = "yes"', "skip_verify must be true or false"),
        ('header = "X-A: b"', "header must be a table"),
        ("header = { X-A = 1 }", "header 'X-A' must be text"),
    ],
)
def test_parse_hosts_rejects_bad_tls_keys(entry, words):
    data = tomllib.loads(f'[host."https://m.example"]\n{entry}\n')

    with pytest.raises(UsageError, match=words):
        parse_hosts(data, "hosts.toml")


def test_read_hosts_falls_back_to_default(tmp_path):
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(HOSTS)

    assert len(read_hosts_mirrors("quay.io", tmp_path)) == 3
    assert read_hosts_mirrors("quay.io", tmp_path / "absent") == []


def test_read_hosts_prefers_underscore_folder(tmp_path):
    (tmp_path / "127.0.0.1_5000_").mkdir()
    (tmp_path / "127.0.0.1_5000_" / "hosts.toml").write_text(HOSTS)
    (tmp_path / "127.0.0.1:5000").mkdir()
    (tmp_path / "127.0.0.1:5000" / "hosts.toml").write_text(TLS_HOSTS)

    assert len(read_hosts_mirrors("127.0.0.1:5000", tmp_path)) == 3


def test_read_hosts_stops_at_first_existing_folder(tmp_path):
    (tmp_path / "127.0.0.1_5000_").mkdir()
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(HOSTS)

    assert read_hosts_mirrors("127.0.0.1:5000", tmp_path) == []


def test_list_sources_merges_settings_of_repeated_mirror(tmp_path):
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text(TLS_HOSTS)

    specs = list_sources(
        Reference.parse("alpine"), ["https://mirror.example"], Config(), tmp_path
    )

    assert specs[0].configured_in == "--mirror"
    assert specs[0].ca_files == (str(tmp_path / "docker.io" / "mirror-ca.crt"),)
    assert ("X-Mirror-Token", "abc") in specs[0].headers


def test_list_sources_orders_flag_config_hosts_origin(tmp_path):
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text(HOSTS)
    config = Config(mirrors={"docker.io": (Mirror("https://m1.example"),)})

    specs = list_sources(
        Reference.parse("alpine"), ["http://127.0.0.1:5001", "https://m1.example"],
        config, tmp_path,
    )  # fmt: skip

    hosts = [spec.endpoint.host for spec in specs]
    assert hosts == [
        "127.0.0.1:5001",
        "m1.example",
        "resolver.example",
        "content.example:5000",
        "api.example",
        "registry-1.docker.io",
    ]
    assert [spec.role for spec in specs][-1] == "origin"
    assert specs[0].configured_in == "--mirror"


def test_list_sources_takes_resolving_flag_mirror(tmp_path):
    flags = ["https://digest.example", Mirror("https://tags.example", resolve=True)]

    specs = list_sources(Reference.parse("alpine"), flags, Config(), tmp_path)

    assert [(s.endpoint.host, s.resolve, s.configured_in) for s in specs[:2]] == [
        ("digest.example", False, "--mirror"),
        ("tags.example", True, "--resolving-mirror"),
    ]


def test_list_sources_rejects_bad_flag_url(tmp_path):
    with pytest.raises(UsageError, match="--mirror"):
        list_sources(Reference.parse("r.example/a"), ["ftp://m"], Config(), tmp_path)
