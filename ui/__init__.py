"""Textual console: a client of the gateway's control API only."""
