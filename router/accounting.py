"""The records that pass between the request pipeline and cost control (ledger, budgets, cutoff).

The pipeline asks ``CostControl.admit`` (cost/budget.py) before it spends money and calls
``settle`` exactly once for every admitted call when it ends, however it ends (success, upstream
failure, client abort), with the usage seen so far. Runtime holds the CostControl itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .internal import Usage


@dataclass
class Reservation:
    """Worst-case cost held against the budget while a cloud call is in flight."""

    id: int
    amount_usd: Decimal
    client: str


@dataclass
class Admission:
    allowed: bool
    reason: str = ""
    reservation: Reservation | None = None
    # "cutoff" (emergency cutoff engaged), "budget" (daily budget spent), "client_budget",
    # "unpriced" (a mode with no price), "unbounded" (no bound on the prompt), "" if allowed
    refusal: str = ""


@dataclass
class RequestRecord:
    """One served (or failed) call, as the ledger stores it."""

    ts: float  # unix time the request arrived
    client: str
    rule: str
    target: str
    backend: str
    model: str
    protocol: str  # "anthropic", "openai" or "mcp"
    stream: bool
    cloud: bool
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: str = "ok"  # "ok", "error", "aborted", "refused"
    http_status: int = 200
    fallback: bool = False  # answered by a fallback target, not the first choice
    downgraded: bool = False  # the rule chose the cloud but budget sent it to a local target
    task: str = ""
    complexity: int = 0
    error: str = ""
    energy_j: float | None = None  # GPU energy used while serving (local targets, NVML counter)
    requested_model: str = ""  # the model the client asked for (prices local calls in the report)
    skipped: str = ""  # targets passed over because the prompt does not fit them: "coder=context,general=context"
    route: str = ""  # the route policy of the user turn (features.route)
    route_source: str = ""  # "embedding", or "keyword" when the embedding backend did not answer
