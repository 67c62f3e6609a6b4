"""The running Veilnet peer: the thin I/O shell over protocol/."""
