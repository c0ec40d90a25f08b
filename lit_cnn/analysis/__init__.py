"""Analysis: the statistics of paired fold scores, and comparisons of architectures."""
