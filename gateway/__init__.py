"""The IPsec gateway appliance: config, daemon, XFRM backend, metrics, control API, CLI, labs."""

__version__ = "0.1.0"
