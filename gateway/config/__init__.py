"""The gateway's configuration: TOML in the vocabulary of strongSwan's swanctl.conf.

    schema.py  the model: frozen dataclasses, each key's default and vocabulary once
    values.py  the value syntax: durations, sizes, addresses, selectors, proposals
    reader.py  TOML text -> GatewayConfig, or ConfigError with every problem (file/line/key)
    engine.py  GatewayConfig -> the IKE engine's configuration (ike/config.py)

docs/config.md is the reference for every key.
"""
