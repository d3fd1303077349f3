"""Null distributions, p-value combination and calibration: the one place randomness is made."""
