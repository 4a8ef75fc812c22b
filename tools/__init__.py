"""Operator commands built from the services: the local cluster, replay, the NATS helpers."""
