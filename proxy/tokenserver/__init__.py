"""Token server mode: scopes and JWTs for a registry with `auth: token`."""
