"""The live state one config produces: backends, rule engine, accounting, GPU monitor.

A SIGHUP builds a new Runtime from the new file and swaps it in; requests already running keep
the Runtime they started with, and its backends are closed only when the last of them ends, so
in-flight streams are never cut by a reload.
"""

from __future__ import annotations

import asyncio
import logging

from .backend_health import BackendHealth
from .backends import Backend, create_backend
from .classifier import RouteClassifier
from .config import RouterConfig
from .context import ContextWindows
from .cost import CostControl
from .gpu import GpuMonitor
from .rules import RuleEngine
from .turns import TurnCache

log = logging.getLogger("aibox_router.runtime")


class Runtime:
    def __init__(self, config: RouterConfig, backends: dict[str, Backend], accounting: CostControl,
                 gpu: GpuMonitor | None, backend_health: BackendHealth | None = None):
        self.config = config
        self.backends = backends
        self.accounting = accounting
        self.gpu = gpu
        # Outlives reloads: a backend that rejects the router's key stays down (and alerted) once.
        self.backend_health = backend_health if backend_health is not None else BackendHealth()
        self.rules = RuleEngine(config, accounting.rule_count_today)
        self.windows = ContextWindows(config)
        # Route examples are embedded once per config load, in the background (keywords meanwhile).
        self.classifier = RouteClassifier(config, cache_dir=config.server.state_dir)
        self.classifier.prepare_soon()
        self.turns = TurnCache(config.routing.turn_cache_size, config.routing.turn_ttl_s)
        self._in_flight = 0
        self._retired = False

    @classmethod
    def open(cls, config: RouterConfig) -> Runtime:
        return cls(config, _make_backends(config), CostControl.open(config), _make_gpu(config))

    def successor(self, config: RouterConfig) -> Runtime:
        """A Runtime for a reloaded config that shares this one's ledger and GPU monitor."""
        self.accounting.reload(config)
        gpu = self.gpu if self.gpu is not None and config.gpu == self.config.gpu else _make_gpu(config)
        return Runtime(config, _make_backends(config), self.accounting, gpu, self.backend_health)

    # In-flight tracking: a retired runtime closes its backends after its last request.
    def acquire(self) -> None:
        self._in_flight += 1

    async def release(self) -> None:
        self._in_flight -= 1
        if self._retired and self._in_flight == 0:
            await self._close_backends()

    async def retire(self) -> None:
        self._retired = True
        if self._in_flight == 0:
            await self._close_backends()

    async def _close_backends(self) -> None:
        await self.classifier.aclose()
        for backend in self.backends.values():
            try:
                await backend.aclose()
            except Exception:  # closing must not fail a reload
                log.exception("closing backend %s", backend.name)

    async def aclose(self) -> None:
        await self._close_backends()
        # Cloud calls still in flight now fail; let them settle (with their estimate) before the
        # ledger closes. Any that do not are recorded at their reservation by accounting.close().
        if not await self.accounting.wait_settled(timeout_s=10):
            log.error("shutting down with cloud calls unsettled; they are recorded at their reservations")
        try:
            # Give alerts in flight (e.g. "budget reached") a bounded chance to go out on shutdown.
            await asyncio.wait_for(self.accounting.drain_alerts(), timeout=10)
        except TimeoutError:
            log.warning("shutting down with alerts still being retried")
        self.accounting.close()
        if self.gpu is not None:
            self.gpu.close()


def _make_backends(config: RouterConfig) -> dict[str, Backend]:
    return {name: create_backend(name, bc) for name, bc in config.backends.items()}


def _make_gpu(config: RouterConfig) -> GpuMonitor | None:
    if not config.gpu.enabled:
        return None
    return GpuMonitor(config.gpu)
