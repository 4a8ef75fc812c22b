"""The bus layer: NATS client, embedded nats-server, NATS command-line options."""
