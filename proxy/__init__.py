"""regproxy: an authenticating TLS reverse proxy for Docker/OCI registries."""

__version__ = "0.1.0"
