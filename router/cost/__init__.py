"""Cost control: the ledger, budgets and the emergency cutoff, alerts, reports.

``CostControl`` is the pipeline's accounting (``admit`` before a cloud call, ``settle`` after
every call); the operator commands (``report``, ``cutoff``, ``budget``) read the same ledger. See docs/cost-control.md.
"""

from __future__ import annotations

from .budget import BudgetLimits, BudgetSnapshot, CostControl, day_of
from .ledger import LEDGER_FILENAME, CutoffState, LedgerRow, LedgerStore, SqliteLedger

__all__ = ["LEDGER_FILENAME", "BudgetLimits", "BudgetSnapshot", "CostControl", "CutoffState", "LedgerRow",
           "LedgerStore", "SqliteLedger", "day_of"]
