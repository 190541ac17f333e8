"""Dedup as global stages: exact (hash groups) and near (MinHash + LSH), each keeping the first in a stable order."""
