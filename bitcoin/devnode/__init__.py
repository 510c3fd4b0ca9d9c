"""An embedded regtest node whose consensus is Bitcoin Core's (libbitcoinkernel).

See docs/devnode.md.
"""
