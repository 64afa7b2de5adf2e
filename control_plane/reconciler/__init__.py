"""Runs one deployment per (engine version, GPU pool) and reports what is ready."""
