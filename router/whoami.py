"""``GET /aibox/whoami``: what the presented client key may do, for ``aibox-router doctor`` and for
people setting up a tool by hand. Authenticated like the API; it names only the targets that key may
use and says nothing about other clients."""

from __future__ import annotations

from typing import Any

from .config import RouterConfig

WHOAMI_PATH = "/aibox/whoami"


def describe(config: RouterConfig, client: str, mcp_path: str) -> dict[str, Any]:
    allowed = config.client_targets(client)
    targets = [{"name": name, "model": target.model, "cloud": config.target_is_cloud(name)}
               for name, target in config.targets.items() if allowed is None or name in allowed]
    budget = next((c.daily_budget for c in config.clients if c.name == client), None)
    return {
        "client": client,  # "anonymous" when the router has no clients (no key needed)
        "targets": targets,
        # Where the rules send a request that names no target, when this client may use it.
        "default_target": None if allowed is not None and config.default_target not in allowed
        else config.default_target,
        # A request may name its target in this header (within "targets"; cloud targets obey the budgets).
        "override_header": config.override_header,
        "daily_budget_usd": budget,  # the client's own daily cloud budget; null: only the router's applies
        "mcp_path": mcp_path,
    }
