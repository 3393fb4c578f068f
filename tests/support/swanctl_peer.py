"""strongSwan's side of the daemon interop tests: one PSK connection `gw` with child `net`
(10.2.0.0/16 === 10.1.0.0/16), dpd_delay 2s, waiting for our daemon to initiate."""

from __future__ import annotations


def peer_swanctl(theirs: str, ours: str, ike: str, esp: str, psk: str) -> str:
    return f"""connections {{
  gw {{
    version = 2
    local_addrs = {theirs}
    remote_addrs = {ours}
    proposals = {ike}
    dpd_delay = 2s
    local {{
      auth = psk
      id = gw-east
    }}
    remote {{
      auth = psk
      id = gw-west
    }}
    children {{
      net {{
        local_ts = 10.2.0.0/16
        remote_ts = 10.1.0.0/16
        esp_proposals = {esp}
        start_action = none
      }}
    }}
  }}
}}
secrets {{
  ike-gw {{
    id-a = gw-west
    id-b = gw-east
    secret = "{psk}"
  }}
}}
"""
