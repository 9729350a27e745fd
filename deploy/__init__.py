"""pyinfra deploy for developer machines (docs/team.md): the team inventory, the tool configs, the deploy."""
