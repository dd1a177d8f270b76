"""A private certificate authority for the TLS servers and token signing.

The registry, the token endpoint and the token signing key all chain to one
self-signed CA, so a client trusts the whole bed through one `ca.crt`.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@dataclass
class KeyPair:
    """A certificate, its private key, and the PEM files that store them."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_pair(
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    directory: Path,
    stem: str,
) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return KeyPair(certificate, key, cert_path, key_path)


def _builder(subject: str, issuer: x509.Name) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def create_ca(directory: Path) -> KeyPair:
    """Create a self-signed CA as `ca.crt` and `ca.key` in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = "apparate test bed CA"
    certificate = (
        _builder(name, _name(name))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(key, hashes.SHA256())
    )
    return _write_pair(certificate, key, directory, "ca")


def _issue(
    ca: KeyPair,
    directory: Path,
    stem: str,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(stem, ca.certificate.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.private_key.public_key()
            ),
            False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    certificate = builder.sign(ca.private_key, hashes.SHA256())
    return _write_pair(certificate, key, directory, stem)


def issue_server_cert(ca: KeyPair, directory: Path, stem: str) -> KeyPair:
    """Issue a TLS server certificate valid for the loopback names."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for address in ("127.0.0.1", "::1"):
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.SubjectAlternativeName(names), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    return _issue(ca, directory, stem, extensions)


def issue_client_cert(ca: KeyPair, directory: Path, stem: str) -> KeyPair:
    """Issue a TLS client certificate, for servers that require mutual TLS."""
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    return _issue(ca, directory, stem, extensions)


def issue_signing_cert(ca: KeyPair, directory: Path, stem: str) -> KeyPair:
    """Issue the certificate of the key that signs registry bearer tokens.

    It carries no extended key usage, so distribution's chain check accepts
    it whatever key usages the verifier requests.
    """
    return _issue(ca, directory, stem, [])


def install_ca(certs_dir: Path, host: str, ca_path: Path) -> Path:
    """Copy the CA into `<certs_dir>/<host>/ca.crt`, the docker certs.d layout."""
    host_dir = certs_dir / host
    host_dir.mkdir(parents=True, exist_ok=True)
    target = host_dir / "ca.crt"
    shutil.copyfile(ca_path, target)
    return target


def client_context(ca_path: Path) -> ssl.SSLContext:
    """Return an SSL context that trusts only the test bed CA."""
    return ssl.create_default_context(cafile=str(ca_path))


def server_context(pair: KeyPair) -> ssl.SSLContext:
    """Return an SSL context for a server that presents `pair`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pair.cert_path), str(pair.key_path))
    return context
