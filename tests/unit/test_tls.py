"""The served certificate's expiry read from its DER (proxy/http/tls.py), against what the
cryptography package reads from the same certificates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trustme
from cryptography import x509

from proxy.http.tls import pem_not_after


@pytest.mark.parametrize(
    "not_after",
    [
        datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),  # UTCTime
        datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # UTCTime's last year
        datetime(2050, 1, 1, tzinfo=UTC),  # GeneralizedTime from 2050 on
        datetime(2101, 2, 3, tzinfo=UTC),
    ],
)
@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_the_leaf_expiry_is_read_from_a_chain(
    not_after: datetime, key_type: trustme.KeyType
) -> None:
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert("localhost", not_after=not_after, key_type=key_type)
    chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)  # leaf first, then the CA
    read = x509.load_pem_x509_certificate(chain).not_valid_after_utc.timestamp()
    assert pem_not_after(chain) == read == not_after.timestamp()


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",  # SEQ{INT 1}
        b"-----BEGIN CERTIFICATE-----\nMIIBAAA=\n-----END CERTIFICATE-----\n",  # cut short
    ],
)
def test_no_certificate_reads_as_none(pem: bytes) -> None:
    assert pem_not_after(pem) is None
