"""The image's health check: the request a client starts with, sent the way a client sends
it: GET /v2/ over TLS on regproxy's own port (default https://127.0.0.1:5043/v2/, or the URL
given as the only argument). Healthy when the TLS handshake succeeds and regproxy answers as
a registry's front end: 401 (it always challenges a request without credentials) or 200, with
`Docker-Distribution-Api-Version: registry/2.0`. Exit 0 healthy, 1 not, with one line why."""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

URL = "https://127.0.0.1:5043/v2/"
API_HEADER = "Docker-Distribution-Api-Version"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else URL
    context = ssl.create_default_context()
    context.check_hostname = False  # the certificate names the registry, not 127.0.0.1
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=5) as response:
            status, version = response.status, response.headers.get(API_HEADER)
    except urllib.error.HTTPError as exc:
        status, version = exc.code, exc.headers.get(API_HEADER)
    except OSError as exc:
        print(f"unhealthy: {url}: {getattr(exc, 'reason', None) or exc}")
        return 1
    if status in (200, 401) and version == "registry/2.0":
        print(f"healthy: {url}: {status}")
        return 0
    print(f"unhealthy: {url}: {status}, {API_HEADER}: {version}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
