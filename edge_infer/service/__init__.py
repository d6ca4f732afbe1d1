"""Running as a service: config file, systemd notify, metrics, logs, and the loop's hooks."""
