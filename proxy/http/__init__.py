"""Reading requests as the registry reads them, and the protocol's own answers."""
