"""Cost control: the ledger, budgets and the emergency cutoff, alerts, reports.

``CostControl`` implements ``accounting.Accounting`` for the pipeline; the operator commands
(``report``, ``cutoff``, ``budget``) read the same ledger. See docs/cost-control.md.
"""

from __future__ import annotations

from .budget import BudgetLimits, BudgetSnapshot, CostControl, day_of
from .ledger import LEDGER_FILENAME, CutoffState, LedgerRow, LedgerStore, SqliteLedger

__all__ = ["LEDGER_FILENAME", "BudgetLimits", "BudgetSnapshot", "CostControl", "CutoffState", "LedgerRow",
           "LedgerStore", "SqliteLedger", "day_of"]
