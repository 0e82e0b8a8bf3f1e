"""Jobs on disk: the versioned spec, the SQLite queue and its owner lock, the one runner, checkpoints, fingerprints, output naming and self-description."""
