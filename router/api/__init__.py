"""Inbound protocol adapters: translate a wire protocol to and from the internal shape."""
