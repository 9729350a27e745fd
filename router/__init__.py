"""aibox router: a cost-controlled gateway between Claude Code (and other clients) and local/cloud models."""
