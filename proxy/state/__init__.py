"""What workers and replicas share while running: events, locks, the stores."""
