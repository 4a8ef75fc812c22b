"""Build a routing policy by name."""

from __future__ import annotations

from typing import Any

from voltana.common.errors import ConfigError
from voltana.schemas.config import SloConfig
from voltana.services.router.policies.base import RoutingPolicy
from voltana.services.router.policies.cache_aware import CacheAwareConfig, CacheAwarePolicy
from voltana.services.router.policies.ecoroute import EcoRoutePolicy
from voltana.services.router.policies.ecoroute_tile import EcoRouteTilePolicy
from voltana.services.router.policies.least_load import LeastLoadPolicy, PowerOfTwoPolicy
from voltana.services.router.policies.random_choice import RandomPolicy
from voltana.services.router.policies.round_robin import RoundRobinPolicy

POLICY_NAMES: tuple[str, ...] = (
    "random",
    "round-robin",
    "least-load",
    "power-of-two",
    "ecoroute-tile",
    "ecoroute",
    "cache-aware",
)

_ALIASES = {
    "round_robin": "round-robin",
    "power_of_two": "power-of-two",
    "least_load": "least-load",
    "cache_aware": "cache-aware",
}


def make_policy(
    name: str,
    *,
    profile: Any = None,
    slo: SloConfig | None = None,
    cache_aware: CacheAwareConfig | None = None,
) -> RoutingPolicy:
    """A fresh policy object.

    Args:
        name: one of :data:`POLICY_NAMES` (sglang-router spellings with ``_`` accepted).
        profile: a freqctl ``Profile``; ``ecoroute`` needs one (None -> the packaged
            default profile).
        slo: the SLO ``ecoroute`` plans for (None -> ``SloConfig()`` defaults).
        cache_aware: ``cache-aware``'s thresholds (None -> sglang-router's defaults).

    Raises:
        ConfigError: unknown name, or no profile could be loaded for ``ecoroute``.
    """
    key = _ALIASES.get(name, name)
    if key == "random":
        return RandomPolicy()
    if key == "round-robin":
        return RoundRobinPolicy()
    if key == "least-load":
        return LeastLoadPolicy()
    if key == "power-of-two":
        return PowerOfTwoPolicy()
    if key == "cache-aware":
        return CacheAwarePolicy(cache_aware)
    if key == "ecoroute-tile":
        return EcoRouteTilePolicy()
    if key == "ecoroute":
        if profile is None:
            try:
                from voltana.predictor.profile import default_profile
            except ImportError as exc:
                raise ConfigError(f"ecoroute needs a profile and none is available: {exc}") from exc
            profile = default_profile()
        return EcoRoutePolicy(profile, slo)
    raise ConfigError(f"unknown routing policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
