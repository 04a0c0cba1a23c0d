"""Inputs the analyses run on: prompt sets, induction sequences, calibration sources."""
