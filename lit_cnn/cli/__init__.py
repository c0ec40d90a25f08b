"""Command lines: the shared plumbing (options, checks, errors, resume, signals, a quiet
terminal) and one module per command (:mod:`.kfold`, :mod:`.compare`).

Nothing is imported here, so ``lit_cnn.cli.startup`` loads before torch does.
"""
