"""Many Veilnet nodes at once: the scale model of cross-checking, and live multi-process scenarios."""
