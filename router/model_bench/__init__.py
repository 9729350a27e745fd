"""``aibox-router bench``: measure the local models on representative tasks.

Each task (a YAML file under ``tasks/`` or a directory given with ``--tasks``) is sent to every
chosen target through the same backend adapters the router uses, streaming, so time to first
token is real. Answers can be checked for correctness; the results go to ``model_performance.json``
(read by the MCP server's ``list_local_models``), a comparison table, an optional chart, and an
optional recommendation of which target should back which task-type rule.

Modules: ``suite`` (task files), ``checks`` (correctness), ``runner`` (measuring),
``report`` (summary, table, recommendation, JSON), ``chart`` (matplotlib).
"""

from .runner import BenchRun, run_bench
from .suite import BenchTask, builtin_tasks, load_tasks

__all__ = ["BenchRun", "BenchTask", "builtin_tasks", "load_tasks", "run_bench"]
