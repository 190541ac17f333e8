"""Stages: the Stage interface (base.py), the registry and the default flows (registry.py)."""
