"""CPU cleaning stages: normalize, length, perplexity, heuristics, exact and near dedup."""
