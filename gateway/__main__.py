"""`python -m gateway`: the `gateway` command (gateway/cli/)."""

from gateway.cli import main

raise SystemExit(main())
