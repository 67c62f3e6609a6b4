"""Veilnet protocol core: sans-IO (no trio, libp2p or torch imports)."""
