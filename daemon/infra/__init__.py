"""Infrastructure the stages stand on: configuration, the clock, logs, metrics, systemd,
the database (embedded or configured) and its migrations, the first-start admin token."""
