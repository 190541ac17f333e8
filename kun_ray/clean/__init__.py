"""CPU cleaning stages, a file each: normalize, cjk_ratio, length, perplexity, heuristics."""
