"""`regproxy import`: Apache httpd.conf and nginx configs -> regproxy YAML. Pure."""
