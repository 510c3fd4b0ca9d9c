"""Development tooling: local nodes, the process stack, the demo and its borrower, and the
contracts as tests deploy them.

Nothing the service runs (web, worker, beat, management commands) imports this package; an
import-linter contract in `make test` keeps it so. It imports the runtime, never the reverse.
"""
