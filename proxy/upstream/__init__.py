"""Talking to the registry: forwarding, the blob existence cache, the catalog, health."""
