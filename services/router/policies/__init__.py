"""Routing policies: pure objects, one module per algorithm, and a factory.

- ``base``: ``InstanceView``, ``ClusterView``, ``RouteRequest``, ``Selection``, the
  ``RoutingPolicy`` Protocol.
- ``random_choice``, ``round_robin``, ``least_load`` (least-load, power-of-two),
  ``ecoroute_tile`` (the published bucket packer), ``ecoroute`` (profile what-if).
- ``factory.make_policy(name, profile=, slo=)``.
"""

from voltana.services.router.policies.base import (
    ClusterView,
    InstanceView,
    RouteRequest,
    RoutingPolicy,
    Selection,
)
from voltana.services.router.policies.factory import POLICY_NAMES, make_policy

__all__ = [
    "POLICY_NAMES",
    "ClusterView",
    "InstanceView",
    "RouteRequest",
    "RoutingPolicy",
    "Selection",
    "make_policy",
]
