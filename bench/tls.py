"""TLS for `--tls`: a throwaway self-signed certificate, and the generator's client context.

The certificate is made with the `openssl` command line (P-256 ECDSA, the key type a modern
deployment would put in front of a token service), valid for 127.0.0.1 and localhost, in the
run's temporary directory, so no key material outlives the run. The generator verifies the
service against that certificate, as a real client would verify its server: the verification
is part of what a handshake costs.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


class CertificateError(RuntimeError):
    """openssl is missing or could not make the certificate; the message says which."""


@dataclass(frozen=True)
class TlsFiles:
    """A certificate (its own trust anchor) and its private key, both PEM."""

    certfile: Path
    keyfile: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate only and checks the host name."""
        return ssl.create_default_context(cafile=str(self.certfile))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
        return ctx


def make_certificate(directory: Path, days: int = 2) -> TlsFiles:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost, made with `openssl req`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("--tls needs the openssl command (Debian: apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
           "-subj", "/CN=tokensvc-bench", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not cert.is_file() or not key.is_file():
        raise CertificateError(f"openssl could not make the certificate ({done.returncode}): "
                               f"{done.stderr.strip()[-500:]}")
    key.chmod(0o600)
    return TlsFiles(cert, key)


def unverified_context() -> ssl.SSLContext:
    """For `--url https://...`: the bench did not make that certificate, so it cannot pin it;
    the load still pays for the handshake and the encryption, which is what is measured."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
