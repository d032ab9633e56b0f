"""Policy steps on the request path that look at the registry or the request's body."""
