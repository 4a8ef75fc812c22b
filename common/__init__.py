"""Shared plumbing: bus client, embedded nats-server, logging, errors."""
