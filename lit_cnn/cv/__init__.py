"""Cross-validation: the K-fold DataModule, one fold's Trainer, the fold loop, the run
directory's files and seal, and fold-parallel runs over torchrun."""
