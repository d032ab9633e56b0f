"""What regproxy tells its operator: access and audit logs, metrics."""
