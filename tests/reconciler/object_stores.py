"""Object stores on loopback for the engine fetch: moto's S3 server (its own process) and an HTTPS
artifact server whose certificate is signed by a CA made for the test."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3:
    """moto in server mode; ``credentials`` are a real IAM user's keys there, enforced once ``enforce_auth``."""

    endpoint: str
    credentials: dict[str, str] = field(default_factory=dict)

    def client(self, **keys: str) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID", "setup"),
                            aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY", "setup"))

    def env(self, **override: str) -> dict[str, str]:
        """What a pool's credentials Secret would hold: keys, region, and the S3-compatible endpoint."""
        return {**self.credentials, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": self.endpoint, **override}


@contextmanager
def moto_s3(tmp: Path) -> Iterator[S3]:
    port = _free_port()
    log = (tmp / "moto.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1.0, trust_env=False)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {(tmp / 'moto.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        import boto3

        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="engine-reader")
        iam.put_user_policy(UserName="engine-reader", PolicyName="read", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="engine-reader")["AccessKey"]
        store = S3(endpoint, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                              "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]})
        yield store
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def enforce_auth(store: S3) -> None:
    """From now on moto checks every request's signature against its IAM users, as S3 does."""
    httpx.post(f"{store.endpoint}/moto-api/reset-auth", content=b"0", trust_env=False).raise_for_status()


# --------------------------------------------------------------------------- HTTPS


@dataclass
class Https:
    url: str
    ca_file: Path
    token: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)


def _ca_and_leaf(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grayroute test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "artifacts.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@contextmanager
def https_store(tmp: Path, token: str = "artifact-token") -> Iterator[Https]:
    """Serves ``files`` under /engines/ to requests bearing ``token``; 401 without it, 403 with another."""
    ca_file, cert_file, key_file = _ca_and_leaf(tmp)
    store = Https("", ca_file, token, {})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass  # quiet tests

        def _answer(self, body: bool) -> None:
            store.requests.append(f"{self.command} {self.path}")
            auth = self.headers.get("Authorization")
            status, data = 200, store.files.get(self.path.removeprefix("/engines/"))
            if store.fail_next:
                status, data = store.fail_next.pop(0), b"try again"
            elif auth is None:
                status, data = 401, b"authentication required"
            elif auth != f"Bearer {store.token}":
                status, data = 403, b"forbidden"
            elif data is None:
                status, data = 404, b"no such artifact"
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    store.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="https-store", daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
