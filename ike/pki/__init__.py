"""Certificates for IKE authentication, sans-IO: DER, X.509 paths, names, signatures.

`der` reads and writes the few DER elements IKE needs; `signatures` signs and verifies
AUTH data (RFC 7427 AlgorithmIdentifiers, the classic methods of RFC 7296 and RFC 4754);
`names` turns distinguished names into strongSwan's text and compares identities;
`x509` loads credentials and trust anchors and validates the peer's certificate path.
ike/auth.py builds the AUTH payloads (RFC 7296 §2.15) on top of them.
"""
