"""vaultero: pure, typed taproot library for btcloan's escrow and collateral outputs."""
