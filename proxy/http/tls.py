"""The server's TLS context: TLS 1.2+ with forward-secret AEAD ciphers only."""

from __future__ import annotations

import base64
import re
import ssl
from datetime import UTC, datetime
from pathlib import Path

from ..core.problems import ConfigError, Problem, read_text

# TLS 1.2 suites; TLS 1.3 suites are always AEAD and are left at OpenSSL's defaults.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS:!SHA1"


def server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _certificate_problem(cert: Path, text: str) -> Problem | None:
    """OpenSSL's own PEM parser on the certificate alone, so a bad file is named as such."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError:
        return Problem(str(cert), 0, "TLS certificate: no PEM certificate in this file")
    return None


def _key_problem(key: Path, text: str) -> Problem | None:
    if "ENCRYPTED" in text:
        return Problem(
            str(key), 0, "TLS key: encrypted with a passphrase; regproxy needs it unencrypted "
            "(openssl pkey -in KEY -out NEW-KEY)",
        )  # fmt: skip
    if "PRIVATE KEY-----" not in text:
        return Problem(str(key), 0, "TLS key: no PEM private key in this file")
    return None


def certificate_expiry(cert: Path) -> float | None:
    """When the first certificate in the PEM file (the server's own) expires, as a UNIX time;
    None if the file has no readable certificate."""
    # Read again after OpenSSL loaded the file by its path, as load_certificate's check does: a
    # file replaced in between is an edit the next poll reloads.
    try:
        return pem_not_after(cert.read_bytes())
    except OSError:
        return None


def pem_not_after(pem: bytes) -> float | None:
    """The first PEM certificate's notAfter as a UNIX time (None: no certificate there). Read
    from the DER here: the cryptography package would cost every worker its memory."""
    found = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True) if found else b""
        tbs = _der_items(_der_items(der)[0][1])[0][1]  # Certificate -> tbsCertificate
        fields = _der_items(tbs)
        if fields[0][0] == 0xA0:  # [0] version, present from v2 on
            fields = fields[1:]
        validity = _der_items(fields[3][1])  # serialNumber, signature, issuer, validity
        return _der_time(*validity[1])
    except (ValueError, IndexError):
        return None


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) of each DER item in `data` (single-byte tags: all X.509 needs)."""
    items, at = [], 0
    while at < len(data):
        tag, length, at = data[at], data[at + 1], at + 2
        if length & 0x80:  # long form: the next (length & 0x7F) bytes
            size = length & 0x7F
            length, at = int.from_bytes(data[at : at + size], "big"), at + size
        if at + length > len(data):
            raise ValueError("DER item longer than its container")
        items.append((tag, data[at : at + length]))
        at += length
    return items


def _der_time(tag: int, value: bytes) -> float:
    """An X.509 Time: UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or GeneralizedTime."""
    text = value.decode("ascii")
    if tag == 0x17:
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:
        raise ValueError(f"not an X.509 time: tag {tag:#x}")
    moment = datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    return moment.timestamp()


def load_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> list[Problem]:
    """Load cert+key into `context`; the problems, each naming the file at fault."""
    texts: list[str] = []
    problems: list[Problem] = []
    for path, what in ((cert, "TLS certificate"), (key, "TLS key")):
        try:
            texts.append(read_text(path))
        except ConfigError as exc:
            problems += [Problem(p.source, p.line, f"{what}: {p.message}") for p in exc.problems]
    if problems:
        return problems
    found = (_certificate_problem(cert, texts[0]), _key_problem(key, texts[1]))
    if any(found):
        return [p for p in found if p is not None]
    try:
        # An empty password: an encrypted key fails here instead of prompting on a terminal.
        context.load_cert_chain(cert, key, password="")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            return [Problem(f"{cert} + {key}", 0, "the certificate does not match the key")]
        return [Problem(str(key), 0, f"TLS key: cannot load: {exc.reason or exc}")]
    except OSError as exc:  # replaced between the reads and the load
        return [Problem(str(exc.filename or cert), 0, f"cannot read: {exc.strerror or exc}")]
    return []
