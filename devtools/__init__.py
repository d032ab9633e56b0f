"""What the tests, the bench and the scripts start, written once: free loopback ports,
processes in sessions of their own stopped by their PID, a real docker-registry, a real slapd,
an OIDC issuer on loopback HTTPS, test TLS files and skopeo with a private home. Not part of
regproxy (never imported by `proxy`); nothing here imports from `tests`."""
