"""Fingerprints and the lineage index: what is this model derived from, among many."""
