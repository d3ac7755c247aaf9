"""A tiny Django app for the backend's own tests (a real model on sqlite in memory)."""
