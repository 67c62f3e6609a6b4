"""Coverage-guided fuzzing (atheris) of every decoder and every handler's input path.

``python -m fuzz`` (``make fuzz``) runs each target in :mod:`fuzz.targets` in its own process for
``--runs`` inputs under an RSS limit and writes ``fuzz/summary.json``; ``tests/fuzz`` runs a short
pass in CI. A target calls one decoder and lets through only the decoder's own typed error: any
other exception, a hang, or memory over the limit is a finding (the crashing input is saved
under ``fuzz/findings/<target>/``).
"""
