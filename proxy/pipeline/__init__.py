"""What every step of the request path shares: the request context and the guard interface."""
