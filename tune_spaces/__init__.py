"""Tune spaces."""
