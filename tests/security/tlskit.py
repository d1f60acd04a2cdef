"""Test-only TLS material and TLS-enabled Redis servers (never used by production code).

`make_pki` writes a throwaway CA, a server certificate for 127.0.0.1/localhost
signed by it, a second unrelated CA, and a certificate for another host name
signed by the first CA, so the suites can show what a client accepts and what
it refuses.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devkit import servers


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server certificates
    other_ca: Path  # an unrelated CA: trusting it must not let a client in
    server_cert: Path  # for DNS localhost and IP 127.0.0.1
    server_key: Path
    wrong_host_cert: Path  # signed by `ca`, but for cache.example.invalid only
    wrong_host_key: Path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("cachesync test CA")
    other_key, other_cert = _ca("some other CA")
    server_key, server_cert = _leaf(
        ca_key, ca_cert, "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    wrong_key, wrong_cert = _leaf(ca_key, ca_cert, "cache.example.invalid", [x509.DNSName("cache.example.invalid")])
    del other_key
    paths = Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        wrong_host_cert=directory / "wrong-host.pem",
        wrong_host_key=directory / "wrong-host.key",
    )
    _write_cert(paths.ca, ca_cert)
    _write_cert(paths.other_ca, other_cert)
    _write_cert(paths.server_cert, server_cert)
    _write_key(paths.server_key, server_key)
    _write_cert(paths.wrong_host_cert, wrong_cert)
    _write_key(paths.wrong_host_key, wrong_key)
    return paths


@dataclass
class TlsServer:
    """A server with a loopback plaintext port for setup and a TLS port for the clients under test."""

    server: servers.ServerProcess
    tls_port: int

    def url(self, host: str = "127.0.0.1", userinfo: str = "") -> str:
        return f"rediss://{userinfo + '@' if userinfo else ''}{host}:{self.tls_port}/0"

    @property
    def admin_url(self) -> str:
        return self.server.url


def start_tls_server(binary: str, cert: Path, key: Path, ca: Path) -> TlsServer:
    def extra(tls_port: int) -> list[str]:
        return [
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",  # server-authenticated TLS, like ElastiCache
        ]  # fmt: skip

    return _start_on_a_tls_port(binary, extra)


def _start_on_a_tls_port(binary: str, extra: Callable[[int], list[str]]) -> TlsServer:
    """A server on a free TLS port; another one when something takes it (or its bus port) first."""
    for attempt in range(servers.BIND_ATTEMPTS):
        tls_port = servers.free_port()  # also checks that tls_port + 10000 (the bus) is free
        try:
            return TlsServer(servers.start_server(binary, extra=extra(tls_port)), tls_port)
        except servers.PortTaken as taken:
            if taken.port not in (tls_port, tls_port + 10000) or attempt == servers.BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@dataclass
class TlsCluster:
    """Redis Cluster over TLS (client and bus), like ElastiCache Serverless or a cluster-mode cache."""

    nodes: list[TlsServer]

    def url(self, userinfo: str = "") -> str:
        return self.nodes[0].url(userinfo=userinfo)

    def remove(self) -> None:
        for node in self.nodes:
            node.server.remove()


def start_tls_cluster(binary: str, pki: Pki, masters: int = 3) -> TlsCluster:
    """Cluster nodes talk TLS on the bus too (`tls-cluster yes`, bus port = TLS port + 10000)."""
    nodes: list[TlsServer] = []
    try:
        for _ in range(masters):

            def extra(tls_port: int) -> list[str]:
                return [
                    "--tls-port", str(tls_port),
                    "--tls-cert-file", str(pki.server_cert),
                    "--tls-key-file", str(pki.server_key),
                    "--tls-ca-cert-file", str(pki.ca),
                    "--tls-auth-clients", "no",
                    "--tls-cluster", "yes",
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", "2000",
                ]  # fmt: skip

            nodes.append(_start_on_a_tls_port(binary, extra))
        first = redis.Redis(port=nodes[0].server.port)
        for node in nodes[1:]:
            first.cluster("MEET", "127.0.0.1", str(node.tls_port), str(node.tls_port + 10000))
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            end = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            redis.Redis(port=node.server.port).cluster("ADDSLOTSRANGE", str(i * per_node), str(end))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [redis.Redis(port=n.server.port, decode_responses=True).cluster("INFO") for n in nodes]
            if all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == masters for i in infos):
                return TlsCluster(nodes)
            time.sleep(0.1)
        raise RuntimeError("the TLS cluster did not reach cluster_state:ok")
    except BaseException:
        for node in nodes:
            node.server.remove()
        raise


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, alt_names: list[x509.GeneralName]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(  # client auth too: cluster nodes present it to each other on the TLS bus
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
