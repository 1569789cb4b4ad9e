"""deploy/nginx/steward.conf run here: the site file as written, inside a minimal main
configuration, with only what is specific to a host replaced: the ports (80 and 443 are
privileged and may be taken), certbot's certificate folder (a certificate made here), the
ACME webroot, and the upstream servers (the deployment's own include file)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.deploy.definitions import DEPLOY
from tests.live import free_port

SITE = DEPLOY / "nginx" / "steward.conf"


@dataclass
class Nginx:
    prefix: Path
    http: int
    https: int
    certificate: Path


def _certificate(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    (folder / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder / "fullchain.pem"


def configure(prefix: Path, upstreams: list[str]) -> Nginx:
    """Write the main configuration, the site and its upstream file under `prefix`."""
    conf = prefix / "conf"
    for folder in (conf, prefix / "logs", prefix / "tmp", prefix / "webroot"):
        folder.mkdir(parents=True, exist_ok=True)
    certificate = _certificate(prefix / "letsencrypt" / "live" / "steward")
    http, https = free_port(), free_port()
    site = SITE.read_text()
    for old, new in (
        ("listen 80;", f"listen 127.0.0.1:{http};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;"),
        ("listen [::]:443 ssl http2;", ""),
        ("/etc/letsencrypt/", f"{prefix}/letsencrypt/"),
        ("/var/www/certbot", f"{prefix}/webroot"),
    ):
        assert old in site, f"{old!r} is no longer in {SITE.name}: update this test's mapping"
        site = site.replace(old, new)
    (conf / "steward.conf").write_text(site)
    (conf / "steward-upstream.conf").write_text("".join(f"server {u};\n" for u in upstreams))
    temp = prefix / "tmp"
    # As root, nginx's workers would run as nobody, who cannot read the test's folders.
    user = "user root;" if os.geteuid() == 0 else ""
    (conf / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include steward.conf;
}}
""")
    return Nginx(prefix=prefix, http=http, https=https, certificate=certificate)


def check_config(binary: str, site: Nginx) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "-t", "-p", str(site.prefix), "-c", str(site.prefix / "conf" / "nginx.conf")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@contextmanager
def running(binary: str, site: Nginx) -> Iterator[Nginx]:
    args = [binary, "-p", str(site.prefix), "-c", str(site.prefix / "conf" / "nginx.conf")]
    subprocess.run(args, check=True, capture_output=True)
    try:
        yield site
    finally:
        subprocess.run([*args, "-s", "quit"], check=False, capture_output=True)
