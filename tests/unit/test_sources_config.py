"""Where mirrors come from: config.toml, hosts.toml, --mirror and their URLs."""

from __future__ import annotations

import tomllib

import httpx
import pytest

from apparate.config import Config, Mirror, load_config, parse_config, parse_size
from apparate.errors import UsageError
from apparate.reference import Reference
from apparate.registry.client import Endpoint
from apparate.registry.transport import TransportSettings
from apparate.sources.hosts import parse_duration, parse_hosts, read_hosts
from apparate.sources.selection import SourceSpec, list_sources

ENDPOINT_CASES = {
    "host only": ("https://mirror.example", False, Endpoint("mirror.example", "https")),
    "trailing slash": ("http://m:5000/", False, Endpoint("m:5000", "http")),
    "IPv6 address": ("http://[::1]:5000", False, Endpoint("[::1]:5000", "http")),
    "path prefix": ("https://m/cache", False, Endpoint("m", "https", "/cache/v2")),
    "path ending in v2": (
        "https://m/cache/v2",
        False,
        Endpoint("m", "https", "/cache/v2"),
    ),
    "override path": ("https://m/api", True, Endpoint("m", "https", "/api")),
    "scheme in capitals": ("HTTP://m:5000", False, Endpoint("m:5000", "http")),
    "host in capitals": (
        "http://Mirror.Lan:5000",
        False,
        Endpoint("mirror.lan:5000", "http"),
    ),
    "default port": ("http://m:80/cache", False, Endpoint("m", "http", "/cache/v2")),
    "international name": (
        "https://bücher.example",
        False,
        Endpoint("xn--bcher-kva.example", "https"),
    ),
}


@pytest.mark.parametrize("url, override, expected", ENDPOINT_CASES.values(),
                         ids=ENDPOINT_CASES)  # fmt: skip
def test_endpoint_parse(url, override, expected):
    assert Endpoint.parse(url, override) == expected


@pytest.mark.parametrize("url", ["ftp://m", "https://", "https:///v2"])
def test_endpoint_parse_rejects(url):
    with pytest.raises(ValueError):
        Endpoint.parse(url)


# Each row: a URL, words its error must contain, and a secret it must not show.
BAD_ENDPOINTS = {
    "no scheme": ("127.0.0.1:6003", "has no scheme", None),
    "empty": ("", "the URL is empty", None),
    "user and password": ("http://user:pw@127.0.0.1:6004", "user name", "pw@"),
    "user without scheme": ("user:pw@127.0.0.1:6004", "user name", "pw@"),
    "query": ("http://127.0.0.1:6006?token=abc", "query", "token"),
    "query after path": ("https://m/cache?token=abc", "query", "token"),
    "fragment": ("https://m/cache#abc", "fragment", "#abc"),
    "port zero": ("http://m:0", "from 1 to 65535", None),
    "port too large": ("http://m:65536", "from 1 to 65535", None),
    "port not a number": ("http://m:http", "from 1 to 65535", None),
    "empty port": ("http://m:", "from 1 to 65535", None),
    "unclosed bracket": ("http://[bad", "invalid host", None),
    "space in host": ("http://mirror example:5000", "invalid host", None),
    "angle bracket in host": ("https://m<x>/cache", "invalid host", None),
}


@pytest.mark.parametrize("url, words, secret", BAD_ENDPOINTS.values(),
                         ids=BAD_ENDPOINTS)  # fmt: skip
def test_endpoint_parse_rejects_with_reason(url, words, secret):
    with pytest.raises(ValueError) as raised:
        Endpoint.parse(url)

    assert words in str(raised.value)
    if secret:
        assert secret not in str(raised.value)
        assert secret not in raised.value.hint


def test_endpoint_parse_hint_for_credentials():
    with pytest.raises(ValueError) as raised:
        Endpoint.parse("http://user:pw@127.0.0.1:6004")

    assert "docker login 127.0.0.1:6004" in raised.value.hint
    assert "config.json" in raised.value.hint


def test_endpoint_parse_hint_for_missing_scheme():
    with pytest.raises(ValueError) as raised:
        Endpoint.parse("127.0.0.1:6003")

    assert "http://127.0.0.1:6003" in raised.value.hint


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
    "unknown setting": ('colour = "blue"', "colour"),
    "into number": ("into = 3", "into"),
    "into empty": ('into = ""', "into"),
    "negative stall": ("stall_timeout = -1", "stall_timeout"),
    "zero stall": ("stall_timeout = 0", "stall_timeout"),
    "nan stall": ("stall_timeout = nan", "stall_timeout"),
    "infinite stall": ("stall_timeout = inf", "stall_timeout"),
    "boolean stall": ("stall_timeout = true", "stall_timeout"),
    "string stall": ('stall_timeout = "10"', "stall_timeout"),
    "stall over a day": ("stall_timeout = 1e12", "up to 86400"),
    "size overflowing": (f'max_store_size = "{"9" * 400}T"', "size too large"),
    "size word": ('max_store_size = "big"', "max_store_size"),
    "negative size": ("max_store_size = -1", "max_store_size"),
    "float size": ("max_store_size = 1.5", "max_store_size"),
    "nan size": ("max_store_size = nan", "max_store_size"),
    "boolean size": ("max_store_size = true", "max_store_size"),
    "registries list": ("registries = []", "registries"),
    "registry as URL": (
        '[registries."http://r:5000"]\nmirrors = ["https://m"]',
        "not a registry host",
    ),
    "registry with path": (
        '[registries."r/team"]\nmirrors = ["https://m"]',
        "not a registry host",
    ),
    "mirrors string": ('[registries."r"]\nmirrors = "https://m"', "registries.r"),
    "mirror without url": (
        '[registries."r"]\nmirrors = [{ resolve = true }]',
        "registries.r.mirrors",
    ),
    "mirror scheme": ('[registries."r"]\nmirrors = ["ftp://m"]', "registries.r"),
    "unknown mirror key": (
        '[registries."r"]\nmirrors = [{ url = "https://m", x = 1 }]',
        "registries.r.mirrors",
    ),
    "resolve string": (
        '[registries."r"]\nmirrors = [{ url = "https://m", resolve = "false" }]',
        "registries.r.mirrors[0].resolve",
    ),
    "resolve number": (
        '[registries."r"]\nmirrors = ["https://a", { url = "https://m", resolve = 1 }]',
        "registries.r.mirrors[1].resolve",
    ),
}


@pytest.mark.parametrize("text, key", BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_parse_config_rejects(tmp_path, text, key):
    path = tmp_path / "config.toml"

    with pytest.raises(UsageError) as raised:
        parse_config(tomllib.loads(text), path)

    assert str(path) in str(raised.value)
    assert key in str(raised.value)


def test_parse_config_docker_hub_alias():
    text = (
        '[registries."registry-1.docker.io"]\nmirrors = ["https://a"]\n'
        '[registries."docker.io"]\nmirrors = ["https://b"]'
    )

    config = parse_config(tomllib.loads(text))

    assert config.mirrors_of("docker.io") == (Mirror("https://a"), Mirror("https://b"))


def test_parse_config_resolve_false():
    text = '[registries."r"]\nmirrors = [{ url = "https://m", resolve = false }]'

    config = parse_config(tomllib.loads(text))

    assert config.mirrors_of("r") == (Mirror("https://m", resolve=False),)


def test_load_config_missing_file_gives_defaults(tmp_path):
    config = load_config(tmp_path / "none.toml")

    assert config.mirrors == {}
    assert config.into is None


def test_load_config_invalid_toml_names_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("into = ")

    with pytest.raises(UsageError, match="config.toml"):
        load_config(path)


def test_load_config_not_utf8_names_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe")

    with pytest.raises(UsageError, match="config.toml.*UTF-8"):
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
  capabilities = ["Pull"]

[host."https://push-only.example"]
  capabilities = ["push"]

[host."https://api.example/custom"]
  override_path = true
"""


def test_parse_hosts():
    mirrors = parse_hosts(tomllib.loads(HOSTS), "hosts.toml").mirrors

    assert mirrors == (
        Mirror("https://resolver.example", resolve=True),
        Mirror("https://content.example:5000", resolve=False),
        Mirror("https://api.example/custom", resolve=True, override_path=True),
    )


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
    hosts = parse_hosts(tomllib.loads(TLS_HOSTS), "hosts.toml", tmp_path)
    mirror, lab = hosts.mirrors

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
        ('header = { "Bad Name" = "1" }', "'Bad Name' is not a valid header name"),
        ('header = { X-A = "cl\u00e9" }', "header 'X-A' has a value with characters"),
        ('header = { X-A = "a\\r\\nX-B: 1" }', "header 'X-A' has a value"),
    ],
)
def test_parse_hosts_rejects_bad_tls_keys(entry, words):
    data = tomllib.loads(f'[host."https://m.example"]\n{entry}\n')

    with pytest.raises(UsageError, match=words):
        parse_hosts(data, "hosts.toml")


def test_read_hosts_falls_back_to_default(tmp_path):
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(HOSTS)

    assert len(read_hosts("quay.io", tmp_path).mirrors) == 3
    assert read_hosts("quay.io", tmp_path / "absent").mirrors == ()


def test_read_hosts_prefers_underscore_folder(tmp_path):
    (tmp_path / "127.0.0.1_5000_").mkdir()
    (tmp_path / "127.0.0.1_5000_" / "hosts.toml").write_text(HOSTS)
    (tmp_path / "127.0.0.1:5000").mkdir()
    (tmp_path / "127.0.0.1:5000" / "hosts.toml").write_text(TLS_HOSTS)

    assert len(read_hosts("127.0.0.1:5000", tmp_path).mirrors) == 3


def test_read_hosts_stops_at_first_existing_folder(tmp_path):
    (tmp_path / "127.0.0.1_5000_").mkdir()
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text(HOSTS)

    assert read_hosts("127.0.0.1:5000", tmp_path).mirrors == ()


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
    hosts_toml = str(tmp_path / "docker.io" / "hosts.toml")
    assert [spec.configured_in for spec in specs] == [
        "--mirror", "--mirror", hosts_toml, hosts_toml, hosts_toml, hosts_toml,
    ]  # fmt: skip


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


@pytest.mark.parametrize(
    "url, secret",
    [
        ("http://user:pw@127.0.0.1:6004", "pw"),
        ("http://127.0.0.1:6006?token=abc", "token"),
        ("127.0.0.1:6003", None),
    ],
    ids=["credentials", "query", "no scheme"],
)
def test_list_sources_rejects_flag_url(tmp_path, url, secret):
    with pytest.raises(UsageError) as raised:
        list_sources(Reference.parse("r.example/a"), [url], Config(), tmp_path)

    assert "from --mirror" in str(raised.value)
    assert raised.value.exit_code == 2
    if secret:
        assert secret not in str(raised.value)


def test_config_mirror_with_credentials_rejected(tmp_path):
    path = tmp_path / "config.toml"
    text = '[registries."r"]\nmirrors = ["http://user:pw@127.0.0.1:6004"]'

    with pytest.raises(UsageError) as raised:
        parse_config(tomllib.loads(text), path)

    message = str(raised.value)
    assert str(path) in message
    assert "registries.r.mirrors[0]" in message
    assert "user name" in message
    assert "docker login 127.0.0.1:6004" in message
    assert "pw" not in message


def test_config_mirror_without_scheme_shows_fix(tmp_path):
    text = '[registries."r"]\nmirrors = ["127.0.0.1:6003"]'

    with pytest.raises(UsageError, match="http://127.0.0.1:6003"):
        parse_config(tomllib.loads(text), tmp_path / "config.toml")


@pytest.mark.parametrize(
    "key, words, secret",
    [
        ("http://user:pw@127.0.0.1:6004", "user name", "pw"),
        ("http://127.0.0.1:6006?token=abc", "query", "token"),
        ("user:pw@127.0.0.1:6004", "user name", "pw"),
        ("https://m.example:70000", "from 1 to 65535", None),
    ],
    ids=["credentials", "query", "credentials without scheme", "port"],
)
def test_parse_hosts_rejects_bad_host_url(caplog, key, words, secret):
    # A proxy key makes apparate warn, which must not show the key either.
    data = tomllib.loads(f'[host."{key}"]\nproxy = "http://p:3128"\n')

    with pytest.raises(UsageError) as raised:
        parse_hosts(data, "certs.d/hosts.toml")

    message = str(raised.value)
    assert "certs.d/hosts.toml: invalid host entry" in message
    assert words in message
    assert raised.value.exit_code == 2
    if secret:
        assert secret not in message
        assert secret not in caplog.text


CLIENT_CASES = {
    "one file": ('"client.pem"', [("client.pem", "")]),
    "absolute file": ('"/etc/certs/client.pem"', [("/etc/certs/client.pem", "")]),
    "list of files": ('["a.pem", "/b.pem"]', [("a.pem", ""), ("/b.pem", "")]),
    "pairs": (
        '[["c.crt", "keys/c.key"], ["/d.pem", ""]]',
        [("c.crt", "keys/c.key"), ("/d.pem", "")],
    ),
}


@pytest.mark.parametrize("value, expected", CLIENT_CASES.values(), ids=CLIENT_CASES)
def test_parse_hosts_client_forms(tmp_path, value, expected):
    data = tomllib.loads(f'[host."https://m.example"]\nclient = {value}\n')

    (mirror,) = parse_hosts(data, "hosts.toml", tmp_path).mirrors

    in_folder = [
        tuple(str(tmp_path / path) if path and path[0] != "/" else path
              for path in pair)
        for pair in expected
    ]  # fmt: skip
    assert mirror.client_certs == tuple(in_folder)


def test_parse_hosts_warns_of_second_client_cert(caplog):
    data = tomllib.loads('[host."https://m.example"]\nclient = ["/a.pem", "/b.pem"]')

    parse_hosts(data, "hosts.toml")

    assert "presents only the first, /a.pem" in caplog.text


DURATION_CASES = {
    "500ms": 0.5,
    "3s": 3.0,
    "1m30s": 90.0,
    "1.5h": 5400.0,
    "1h2m3.5s": 3723.5,
    "250us": 0.00025,
    "250µs": 0.00025,
    "100ns": 1e-7,
    "+2s": 2.0,
    "0": 0.0,
    "0s": 0.0,
    ".5s": 0.5,
}


@pytest.mark.parametrize("text, seconds", DURATION_CASES.items(), ids=DURATION_CASES)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


BAD_DURATIONS = {
    "5": "no unit after 5",
    "3 s": "unknown unit ' s'",
    "1d": "unknown unit 'd'",
    "-1s": "cannot be negative",
    "s": "no number before 's'",
    "1.2.3s": "no unit after 1.2",
    "+": "no number",
    "\u0663s": "no number before",
    "2562048h": "over Go's largest duration",
}


@pytest.mark.parametrize("text, words", BAD_DURATIONS.items(), ids=BAD_DURATIONS)
def test_parse_duration_rejects(text, words):
    with pytest.raises(ValueError, match=words):
        parse_duration(text)


@pytest.mark.parametrize(
    "entry, words",
    [
        ('dial_timeout = "5"', "dial_timeout '5' is invalid: no unit after 5"),
        ('dial_timeout = "-3s"', "dial_timeout '-3s' is invalid: .* negative"),
        ("dial_timeout = 3", "dial_timeout must be a string"),
        ("client = 5", "client must be a path"),
        ('client = [["only.pem"]]', r"client entry \['only.pem'\] must be"),
        ('client = [["a", "b", "c"]]', "client entry .* must be"),
        ('client = [["", "k.pem"]]', "client entry .* must be"),
        ("client = [5]", "client entry 5 must be"),
        ('client = ""', "client entry '' must be"),
        ("override_path = 1", "override_path must be true or false"),
        ('capabilities = "pull"', "capabilities must be a list"),
        ('capabilities = ["pull", "fetch"]', "unknown capability 'fetch'"),
    ],
)
def test_parse_hosts_rejects_bad_host_keys(entry, words):
    data = tomllib.loads(f'[host."https://m.example"]\n{entry}\n')

    with pytest.raises(UsageError, match=f"certs.d/hosts.toml: host.* {words}"):
        parse_hosts(data, "certs.d/hosts.toml")


def test_parse_hosts_caps_dial_timeout_at_a_day():
    data = tomllib.loads('[host."https://a.example"]\ndial_timeout = "2562047h"\n')

    (mirror,) = parse_hosts(data, "hosts.toml").mirrors

    assert mirror.dial_timeout == 86400.0


def test_parse_hosts_reads_dial_timeout_of_entry():
    data = tomllib.loads(
        '[host."https://a.example"]\ndial_timeout = "1m30s"\n'
        '[host."https://b.example"]\ndial_timeout = ""\n'
    )

    a, b = parse_hosts(data, "hosts.toml").mirrors

    assert a.dial_timeout == 90.0
    assert b.dial_timeout is None


def test_parse_hosts_top_level_settings(tmp_path, caplog):
    text = """
server = "https://registry.example:5000"
ca = "registry-ca.crt"
client = [["client.crt", "client.key"]]
skip_verify = true
dial_timeout = "2s"
[header]
  X-Registry-Token = "abc"
"""

    hosts = parse_hosts(tomllib.loads(text), "hosts.toml", tmp_path)

    assert hosts.mirrors == ()
    assert hosts.origin == Mirror(
        "https://registry.example:5000",
        resolve=True,
        ca_files=(str(tmp_path / "registry-ca.crt"),),
        skip_verify=True,
        headers=(("X-Registry-Token", "abc"),),
        client_certs=((str(tmp_path / "client.crt"), str(tmp_path / "client.key")),),
        dial_timeout=2.0,
    )
    assert "not applied" not in caplog.text


def test_parse_hosts_origin_absent():
    hosts = parse_hosts(tomllib.loads(TLS_HOSTS), "hosts.toml")

    assert hosts.origin is None


def test_parse_hosts_warns_of_keys_not_applied(caplog):
    text = """
proxy = "http://proxy.example:3128"
capabilities = ["pull"]
[host."https://m.example"]
  proxy = "http://proxy.example:3128"
"""

    parse_hosts(tomllib.loads(text), "hosts.toml")

    assert "hosts.toml: top-level proxy not applied" in caplog.text
    assert "hosts.toml: proxy of https://m.example not applied" in caplog.text
    assert "top-level capabilities ['pull'] not applied" in caplog.text


@pytest.mark.parametrize(
    "entry, words",
    [
        ('server = "ftp://registry.example"', "unsupported scheme"),
        ('server = "https://user@registry.example"', "user name"),
        ('server = "https://registry.example/?ns=x"', "query"),
        ('server = "https:///v2"', "no host"),
        ('server = ""', "server must be a URL"),
        ("server = 5000", "server must be a URL"),
        ('ca = ["a.crt", 1]', "ca must be a path"),
        ('dial_timeout = "soon"', "dial_timeout 'soon' is invalid"),
        ('client = {cert = "a"}', "client must be a path"),
        ('skip_verify = "no"', "skip_verify must be true or false"),
        ("capabilities = [1]", "capabilities must be a list"),
    ],
)
def test_parse_hosts_rejects_bad_top_level_keys(entry, words):
    data = tomllib.loads(f"{entry}\n")

    with pytest.raises(UsageError, match=f"certs.d/hosts.toml: .*{words}"):
        parse_hosts(data, "certs.d/hosts.toml")


SERVER_CASES = {
    "https": ('server = "https://registry-1.docker.io"',
              Endpoint("registry-1.docker.io", "https", "/v2")),
    "no scheme": ('server = "10.0.0.5:5000"', Endpoint("10.0.0.5:5000", "https")),
    "plain http": ('server = "http://127.0.0.1:5000/"',
                   Endpoint("127.0.0.1:5000", "http")),
    "path prefix": ('server = "https://r.example/prefix"',
                    Endpoint("r.example", "https", "/prefix/v2")),
    "override_path": ('server = "https://r.example/api"\noverride_path = true',
                      Endpoint("r.example", "https", "/api")),
}  # fmt: skip


@pytest.mark.parametrize("text, endpoint", SERVER_CASES.values(), ids=SERVER_CASES)
def test_list_sources_reaches_origin_at_server(tmp_path, text, endpoint):
    (tmp_path / "registry.invalid_5000_").mkdir()
    (tmp_path / "registry.invalid_5000_" / "hosts.toml").write_text(text)
    reference = Reference.parse("registry.invalid:5000/team/app:v1")

    *_, origin = list_sources(reference, [], Config(), tmp_path)

    assert origin.endpoint == endpoint
    assert origin.role == "origin"
    assert origin.resolve
    assert origin.configured_in == str(
        tmp_path / "registry.invalid_5000_" / "hosts.toml"
    )
    assert str(reference) == "registry.invalid:5000/team/app:v1"


def test_list_sources_applies_top_level_tls_to_origin(tmp_path):
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text(
        'ca = "hub-ca.crt"\nclient = "hub-client.pem"\ndial_timeout = "500ms"\n'
        '[header]\nX-Trace = "1"\n' + HOSTS.replace("server =", "# server =")
    )

    specs = list_sources(Reference.parse("alpine"), [], Config(), tmp_path)

    folder = tmp_path / "docker.io"
    origin = specs[-1]
    assert origin.endpoint == Endpoint("registry-1.docker.io")
    assert origin.configured_in == "reference"
    assert origin.ca_files == (str(folder / "hub-ca.crt"),)
    assert origin.client_certs == ((str(folder / "hub-client.pem"), ""),)
    assert origin.dial_timeout == 0.5
    assert origin.headers == (("X-Trace", "1"),)
    assert all(spec.client_certs == () for spec in specs[:-1])


def test_list_sources_keeps_origin_without_hosts_file(tmp_path):
    specs = list_sources(Reference.parse("alpine"), [], Config(), tmp_path)

    assert specs == [SourceSpec(Endpoint("registry-1.docker.io"), "origin", True,
                                "reference")]  # fmt: skip


@pytest.mark.parametrize("url", ["http://Mirror.Lan:5000", "http://mirror.lan:80"])
def test_plain_http_mirror_passes_scheme_check(url):
    endpoint = Endpoint.parse(url)
    settings = TransportSettings(insecure_registries=frozenset({endpoint.host}))
    request = httpx.Request("GET", f"{endpoint.base_urls(settings)[0]}/v2/")

    settings._check_scheme(request)
