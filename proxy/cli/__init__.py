"""The command line: serve, check, explain, passwd, import, robot."""
