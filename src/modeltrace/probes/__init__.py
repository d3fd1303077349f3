"""Secret probe sets: making them, committing to them by hash, and scoring shared mistakes."""
