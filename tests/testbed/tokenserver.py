"""A token endpoint for distribution's `auth: token` mode.

It checks basic credentials, grants the requested repository scopes and
returns a JWT signed with ES256, whose signing certificate travels in the
`x5c` header as distribution's token verifier expects. Tests change its
public attributes to exercise client paths: which response field contains the
token, whether `expires_in` is sent, and how long the token stays valid.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .certs import KeyPair

log = logging.getLogger(__name__)

TOKEN_PATH = "/token"
DEFAULT_LIFETIME = 300
DEFAULT_ACTIONS = frozenset({"pull", "push", "delete"})
# distribution accepts a token up to this many seconds after its `exp`
# (its verifier allows that much clock skew), so a token meant to be
# rejected at once needs an `exp` further in the past than this.
REGISTRY_LEEWAY = 60


@dataclass
class TokenRequest:
    """One request the endpoint received, for tests to inspect."""

    method: str
    username: str | None
    service: str | None
    scopes: list[str]
    granted: bool
    params: dict[str, list[str]] = field(default_factory=dict)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_scope(scope: str) -> dict[str, Any] | None:
    """Parse `repository:NAME:ACTIONS` into a JWT `access` entry.

    NAME may itself contain colons (a registry host with a port), so the type
    ends at the first colon and the actions start after the last one.
    """
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last == first:
        return None
    actions = [a for a in scope[last + 1 :].split(",") if a]
    return {"type": scope[:first], "name": scope[first + 1 : last], "actions": actions}


class TokenServer:
    """An HTTPS token endpoint running in a background thread.

    Public attributes, read at each request:
    - `token_field`: "token", "access_token" or "both", the JSON field(s)
      that carry the token;
    - `expires_in`: the value of the `expires_in` field, or None to omit it;
    - `lifetime`: seconds from now to the JWT's `exp` (may be negative);
    - `allowed_actions`: the actions granted when a scope requests them;
    - `allow_anonymous`: whether requests without credentials get a token
      with no access (as Docker Hub does) instead of a 401.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        service: str,
        issuer: str,
        signer: KeyPair,
        tls: KeyPair,
    ) -> None:
        self.username = username
        self.password = password
        self.service = service
        self.issuer = issuer
        self._signer = signer
        self._signer_der = signer.certificate.public_bytes(serialization.Encoding.DER)
        self._tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls_context.load_cert_chain(str(tls.cert_path), str(tls.key_path))
        self.requests: list[TokenRequest] = []
        self.reset()
        self._httpd = _TLSServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )

    def reset(self) -> None:
        """Restore the default behaviour and forget recorded requests."""
        self.token_field = "token"
        self.expires_in: int | None = DEFAULT_LIFETIME
        self.lifetime = DEFAULT_LIFETIME
        self.allowed_actions: set[str] = set(DEFAULT_ACTIONS)
        self.allow_anonymous = False
        self.requests.clear()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The URL that the registry names in its Bearer challenge."""
        return f"https://{self.host}{TOKEN_PATH}"

    def start(self) -> None:
        self._thread.start()
        log.info("token server listening on %s", self.realm)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        log.info("token server on %s stopped", self.host)

    def wrap(self, sock: Any) -> ssl.SSLSocket:
        return self._tls_context.wrap_socket(sock, server_side=True)

    def issue(self, subject: str, scopes: list[str]) -> str:
        """Return a signed JWT that grants `scopes`, limited by `allowed_actions`."""
        access = []
        for scope in scopes:
            entry = parse_scope(scope)
            if entry is None:
                continue
            entry["actions"] = [
                a for a in entry["actions"] if a in self.allowed_actions
            ]
            access.append(entry)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return self._sign(claims)

    def _sign(self, claims: dict[str, Any]) -> str:
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self._signer_der).decode("ascii")],
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims)
        )
        der = self._signer.private_key.sign(
            signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())
        )
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def response_body(self, token: str) -> dict[str, Any]:
        """Build the JSON body according to `token_field` and `expires_in`."""
        body: dict[str, Any] = {}
        if self.token_field in ("token", "both"):
            body["token"] = token
        if self.token_field in ("access_token", "both"):
            body["access_token"] = token
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        body["issued_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return body

    def check_credentials(self, username: str | None, password: str | None) -> bool:
        if username is None:
            return self.allow_anonymous
        return secrets.compare_digest(
            f"{username}\0{password}", f"{self.username}\0{self.password}"
        )


class _TLSServer(ThreadingHTTPServer):
    """Does the TLS handshake in the request thread, not in the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, owner: TokenServer):
        self.owner = owner
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls_socket = self.owner.wrap(request)
        try:
            self.RequestHandlerClass(tls_socket, client_address, self)
        finally:
            tls_socket.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning(
            "token server request from %s failed: %r", client_address, sys.exc_info()[1]
        )


class _Handler(BaseHTTPRequestHandler):
    server: _TLSServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("token server: " + format, *args)

    def _basic_credentials(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except ValueError:
            return None, None
        username, _, password = decoded.partition(":")
        return username, password

    def _send_json(self, status: int, body: dict[str, Any], **headers: str) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def _reject(self) -> None:
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "invalid credentials"}]}
        realm = 'Basic realm="apparate test bed token server"'
        self._send_json(401, body, WWW_Authenticate=realm)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != TOKEN_PATH:
            self._send_json(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        params = parse_qs(url.query)
        username, password = self._basic_credentials()
        self._answer("GET", username, password, params, params.get("scope", []))

    def do_POST(self) -> None:
        """Serve the OAuth2 password grant that newer docker clients send."""
        length = int(self.headers.get("Content-Length", "0"))
        params = parse_qs(self.rfile.read(length).decode("utf-8"))
        if urlsplit(self.path).path != TOKEN_PATH:
            self._send_json(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        if params.get("grant_type") != ["password"]:
            self._send_json(400, {"error": "unsupported_grant_type"})
            return
        username = params.get("username", [None])[0]
        password = params.get("password", [None])[0]
        scopes = " ".join(params.get("scope", [])).split()
        self._answer("POST", username, password, params, scopes)

    def _answer(
        self,
        method: str,
        username: str | None,
        password: str | None,
        params: dict[str, list[str]],
        scopes: list[str],
    ) -> None:
        owner = self.server.owner
        granted = owner.check_credentials(username, password)
        service = params.get("service", [None])[0]
        owner.requests.append(
            TokenRequest(method, username, service, scopes, granted, params)
        )
        if not granted:
            self._reject()
            return
        token = owner.issue(username or "", scopes if username else [])
        self._send_json(200, owner.response_body(token))
