"""The privileged actuator: applies clock commands under leases, resets on every exit."""
