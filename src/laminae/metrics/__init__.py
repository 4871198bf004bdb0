"""Similarity-matrix metrics for the experiment-1 analysis, pure NumPy (float64), vectorised
over leading axes (layers, components):

- `similarity`: cosine-similarity matrices, optionally on z-scored dimensions.
- `selectivity`: the category-selectivity index and its label-permutation test.
- `rsa`: correlation of similarity matrices' upper triangles, with a bootstrap over items.
- `resampling`: seeded permutations, bootstrap draws, p-values and percentile intervals.
"""
