"""Tests for finding registry credentials in Docker's config and helpers."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from apparate.errors import CredentialsUnavailable
from apparate.registry.credentials import Credentials, CredentialStore

HUB_KEY = "https://index.docker.io/v1/"
HELPER_SCRIPT = """#!{python}
import json, pathlib, sys

folder = pathlib.Path(__file__).parent
server = sys.stdin.read()
with open(folder / "calls.log", "a") as log:
    log.write(server + "\\n")
answer = json.loads((folder / "answers.json").read_text()).get(server)
if answer is None:
    print("credentials not found in native keychain")
    sys.exit(1)
if "fail" in answer:
    print(answer["fail"], file=sys.stderr)
    sys.exit(2)
print(answer.get("raw") or json.dumps(answer))
"""


def basic_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


class FakeHelper:
    """A docker-credential-NAME script that returns answers from a JSON file."""

    def __init__(self, folder: Path, name: str = "test") -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        script = folder / f"docker-credential-{name}"
        script.write_text(HELPER_SCRIPT.format(python=sys.executable))
        script.chmod(0o755)
        self.answer({})

    def answer(self, answers: dict[str, Any]) -> None:
        (self.folder / "answers.json").write_text(json.dumps(answers))

    def calls(self) -> list[str]:
        log = self.folder / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def helper(tmp_path: Path) -> FakeHelper:
    return FakeHelper(tmp_path / "bin")


@pytest.fixture
def env(home: Path, helper: FakeHelper) -> dict[str, str]:
    return {"HOME": str(home), "PATH": str(helper.folder)}


def write_config(home: Path, document: Any) -> Path:
    path = home / ".docker" / "config.json"
    path.parent.mkdir(exist_ok=True)
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_text(text)
    return path


def store_with(home: Path, env: dict[str, str], document: Any) -> CredentialStore:
    write_config(home, document)
    return CredentialStore.from_environment(env=env)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            {"auth": basic_auth("ann", "pa:ss")},
            Credentials("ann", "pa:ss"),
            id="auth-field",
        ),
        pytest.param(
            {"username": "ann", "password": "secret"},
            Credentials("ann", "secret"),
            id="username-password",
        ),
        pytest.param(
            {"auth": basic_auth("ann", "secret"), "identitytoken": "refresh"},
            Credentials("ann", "secret", identity_token="refresh"),
            id="identity-token-with-auth",
        ),
        pytest.param(
            {"identitytoken": "refresh"},
            Credentials("", "", identity_token="refresh"),
            id="identity-token-alone",
        ),
        pytest.param({}, None, id="empty-entry"),
    ],
)
def test_lookup_auths_forms(
    home: Path, env: dict[str, str], entry: dict[str, str], expected: Credentials | None
) -> None:
    store = store_with(home, env, {"auths": {"registry.example": entry}})

    assert store.lookup("registry.example") == expected


@pytest.mark.parametrize(
    ("key", "host"),
    [
        pytest.param("registry.example", "registry.example", id="bare-host"),
        pytest.param("https://registry.example/", "registry.example", id="https-slash"),
        pytest.param("http://registry.example/v1/", "registry.example", id="http-path"),
        pytest.param("https://Registry.Example", "registry.example", id="upper-case"),
        pytest.param("localhost:5000", "localhost:5000", id="port"),
        pytest.param(
            "https://localhost:5000/v2/", "localhost:5000", id="port-and-path"
        ),
        pytest.param(HUB_KEY, "docker.io", id="hub-key-docker-io"),
        pytest.param(HUB_KEY, "index.docker.io", id="hub-key-index"),
        pytest.param(HUB_KEY, "registry-1.docker.io", id="hub-key-registry-1"),
        pytest.param("docker.io", "registry-1.docker.io", id="hub-docker-io-key"),
    ],
)
def test_lookup_matches_key_forms(
    home: Path, env: dict[str, str], key: str, host: str
) -> None:
    entry = {"auth": basic_auth("ann", "secret")}
    store = store_with(home, env, {"auths": {key: entry}})

    assert store.lookup(host) == Credentials("ann", "secret")


@pytest.mark.parametrize(
    ("key", "host"),
    [
        pytest.param("registry.example", "other.example", id="other-host"),
        pytest.param("localhost:5000", "localhost:5001", id="other-port"),
        pytest.param("localhost:5000", "localhost", id="no-port"),
        pytest.param(HUB_KEY, "registry.example", id="hub-key-other-host"),
    ],
)
def test_lookup_ignores_other_registries(
    home: Path, env: dict[str, str], key: str, host: str
) -> None:
    store = store_with(home, env, {"auths": {key: {"auth": basic_auth("a", "b")}}})

    assert store.lookup(host) is None


def test_lookup_prefers_exact_key(home: Path, env: dict[str, str]) -> None:
    auths = {
        "docker.io": {"auth": basic_auth("alias", "one")},
        HUB_KEY: {"auth": basic_auth("canonical", "two")},
    }
    store = store_with(home, env, {"auths": auths})

    assert store.lookup("registry-1.docker.io") == Credentials("canonical", "two")


def test_lookup_without_config(env: dict[str, str]) -> None:
    store = CredentialStore.from_environment(env=env)

    assert store.lookup("registry.example") is None


def test_lookup_without_home() -> None:
    store = CredentialStore.from_environment(env={})

    assert store.lookup("registry.example") is None


def test_lookup_reads_docker_config_dir(
    home: Path, env: dict[str, str], tmp_path: Path
) -> None:
    write_config(home, {"auths": {"registry.example": {"auth": basic_auth("h", "1")}}})
    other = tmp_path / "other"
    other.mkdir()
    auths = {"registry.example": {"auth": basic_auth("d", "2")}}
    (other / "config.json").write_text(json.dumps({"auths": auths}))
    env["DOCKER_CONFIG"] = str(other)

    store = CredentialStore.from_environment(env=env)

    assert store.lookup("registry.example") == Credentials("d", "2")


def test_lookup_explicit_wins_for_its_host(home: Path, env: dict[str, str]) -> None:
    auths = {
        "registry.example": {"auth": basic_auth("file", "1")},
        "other.example": {"auth": basic_auth("file", "2")},
    }
    write_config(home, {"auths": auths})
    explicit = {"registry.example": Credentials("flag", "3")}

    store = CredentialStore.from_environment(explicit, env=env)

    assert store.lookup("registry.example") == Credentials("flag", "3")
    assert store.lookup("other.example") == Credentials("file", "2")


def test_lookup_explicit_docker_hub(env: dict[str, str]) -> None:
    explicit = {"docker.io": Credentials("flag", "1")}

    store = CredentialStore.from_environment(explicit, env=env)

    assert store.lookup("registry-1.docker.io") == Credentials("flag", "1")


def test_lookup_cred_helper(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({"registry.example": {"Username": "ann", "Secret": "secret"}})
    config = {"credHelpers": {"registry.example": "test"}}

    store = store_with(home, env, config)

    assert store.lookup("registry.example") == Credentials("ann", "secret")
    assert helper.calls() == ["registry.example"]


def test_lookup_cred_helper_token_username(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({"registry.example": {"Username": "<token>", "Secret": "refresh"}})
    store = store_with(home, env, {"credsStore": "test"})

    assert store.lookup("registry.example") == Credentials("", "", "refresh")


def test_lookup_cred_helper_docker_hub_server_url(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({HUB_KEY: {"Username": "ann", "Secret": "secret"}})
    store = store_with(home, env, {"credHelpers": {HUB_KEY: "test"}})

    assert store.lookup("registry-1.docker.io") == Credentials("ann", "secret")
    assert helper.calls() == [HUB_KEY]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            {
                "credHelpers": {"registry.example": "test"},
                "credsStore": "missing",
                "auths": {"registry.example": {"auth": basic_auth("file", "1")}},
            },
            Credentials("helper", "2"),
            id="cred-helper-over-store-and-auths",
        ),
        pytest.param(
            {
                "credsStore": "test",
                "auths": {"registry.example": {"auth": basic_auth("file", "1")}},
            },
            Credentials("helper", "2"),
            id="store-over-auths",
        ),
        pytest.param(
            {
                "credHelpers": {"other.example": "missing"},
                "auths": {"registry.example": {"auth": basic_auth("file", "1")}},
            },
            Credentials("file", "1"),
            id="helper-for-other-host-ignored",
        ),
    ],
)
def test_lookup_precedence(
    home: Path,
    env: dict[str, str],
    helper: FakeHelper,
    config: dict[str, Any],
    expected: Credentials,
) -> None:
    helper.answer({"registry.example": {"Username": "helper", "Secret": "2"}})
    store = store_with(home, env, config)

    assert store.lookup("registry.example") == expected


def test_lookup_helper_not_found_hides_auths(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    # Docker does not fall back to "auths" once a helper is configured.
    auths = {"registry.example": {"auth": basic_auth("file", "1")}}
    store = store_with(home, env, {"credsStore": "test", "auths": auths})

    assert store.lookup("registry.example") is None
    assert helper.calls() == ["registry.example"]


def test_lookup_caches_helper_answer(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({"registry.example": {"Username": "ann", "Secret": "secret"}})
    store = store_with(home, env, {"credsStore": "test"})

    store.lookup("registry.example")
    store.lookup("registry.example")

    assert helper.calls() == ["registry.example"]


def test_lookup_caches_helper_failure(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({"registry.example": {"fail": "keychain is locked"}})
    store = store_with(home, env, {"credsStore": "test"})

    errors = []
    for _ in range(2):
        with pytest.raises(CredentialsUnavailable) as caught:
            store.lookup("registry.example")
        errors.append(str(caught.value))

    assert helper.calls() == ["registry.example"]
    assert errors[0] == errors[1]
    assert "keychain is locked" in errors[1]


def test_reaching_shares_helper_failure_cache(
    home: Path, env: dict[str, str], helper: FakeHelper
) -> None:
    helper.answer({"registry.example": {"fail": "keychain is locked"}})
    store = store_with(home, env, {"credsStore": "test"})
    with pytest.raises(CredentialsUnavailable):
        store.lookup("registry.example")

    reaching = store.reaching("registry.example", "server.example")
    with pytest.raises(CredentialsUnavailable):
        reaching.lookup("registry.example")

    assert helper.calls() == ["registry.example"]


def test_lookup_helper_missing(home: Path, env: dict[str, str]) -> None:
    store = store_with(home, env, {"credHelpers": {"registry.example": "absent"}})

    with pytest.raises(CredentialsUnavailable) as caught:
        store.lookup("registry.example")

    assert "docker-credential-absent" in str(caught.value)
    assert "registry.example" in str(caught.value)
    assert "not found on PATH" in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        pytest.param({"fail": "keychain is locked"}, "keychain is locked", id="exit-2"),
        pytest.param({"raw": "user=ann"}, "not a JSON object", id="not-json"),
        pytest.param({"raw": '{"Secret": 7}'}, "not a JSON object", id="secret-number"),
    ],
)
def test_lookup_helper_fails(
    home: Path,
    env: dict[str, str],
    helper: FakeHelper,
    answer: dict[str, str],
    problem: str,
) -> None:
    helper.answer({"registry.example": answer})
    store = store_with(home, env, {"credsStore": "test"})

    with pytest.raises(CredentialsUnavailable) as caught:
        store.lookup("registry.example")

    assert problem in str(caught.value)
    assert "docker-credential-test" in str(caught.value)
    assert "registry.example" in str(caught.value)
    assert "user=ann" not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        pytest.param('{"auths": {', "not valid JSON", id="truncated"),
        pytest.param("[]", "not a JSON object", id="list"),
        pytest.param({"auths": []}, '"auths" is not an object', id="auths-list"),
        pytest.param({"credHelpers": {"a": 1}}, '"credHelpers"', id="helper-number"),
        pytest.param({"credsStore": 1}, '"credsStore"', id="store-number"),
        pytest.param(
            {"auths": {"registry.example": "x"}}, "is not an object", id="entry-string"
        ),
        pytest.param(
            {"auths": {"registry.example": {"auth": "!!!"}}},
            "not base64",
            id="auth-not-base64",
        ),
        pytest.param(
            {
                "auths": {
                    "registry.example": {"auth": base64.b64encode(b"ann").decode()}
                }
            },
            "user:password",
            id="auth-without-colon",
        ),
        pytest.param(
            {"auths": {"registry.example": {"password": 5}}},
            "not text",
            id="password-number",
        ),
    ],
)
def test_lookup_malformed_config(
    home: Path, env: dict[str, str], document: Any, problem: str
) -> None:
    path = write_config(home, document)
    store = CredentialStore.from_environment(env=env)

    with pytest.raises(CredentialsUnavailable) as caught:
        store.lookup("registry.example")

    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_lookup_malformed_config_only_when_needed(
    home: Path, env: dict[str, str]
) -> None:
    write_config(home, "{not json")
    explicit = {"registry.example": Credentials("flag", "1")}

    store = CredentialStore.from_environment(explicit, env=env)

    assert store.lookup("registry.example") == Credentials("flag", "1")


def test_lookup_empty_config_file(home: Path, env: dict[str, str]) -> None:
    store = store_with(home, env, "  \n")

    assert store.lookup("registry.example") is None


def test_credentials_repr_hides_secrets() -> None:
    text = repr(Credentials("ann", "hunter2", identity_token="refresh-me"))

    assert "ann" in text
    assert "hunter2" not in text
    assert "refresh-me" not in text


def test_reaching_gives_explicit_credentials_to_server(
    home: Path, env: dict[str, str]
) -> None:
    write_config(home, {"auths": {}})
    explicit_credentials = Credentials("flag-user", "two")
    explicit = CredentialStore.from_environment(
        {"registry.example": explicit_credentials}, env
    )

    reaching = explicit.reaching("registry.example", "mirror.example:5000")

    assert reaching.lookup("mirror.example:5000") == explicit_credentials
    assert reaching.lookup("registry.example") == explicit_credentials
    assert explicit.lookup("mirror.example:5000") is None


def test_reaching_keeps_saved_credentials_of_server(
    home: Path, env: dict[str, str]
) -> None:
    saved = {"auths": {"server.example": {"auth": basic_auth("saved", "one")}}}
    store = store_with(home, env, saved)

    reaching = store.reaching("registry.example", "server.example")

    assert reaching.lookup("server.example") == Credentials("saved", "one")
