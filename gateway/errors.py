"""Errors a user can cause and fix. The CLI prints them as one line, never a stack trace."""


class GatewayError(Exception):
    """Base class: the message is meant for the user as it is."""


class CommandError(GatewayError):
    """A command-line request that cannot be carried out (bad argument, missing tool...)."""
