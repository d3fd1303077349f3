"""Scans: walk a collection, fingerprint every checkpoint in worker processes, one writer into the index."""
