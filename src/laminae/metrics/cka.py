"""Centered kernel alignment (CKA) between representations: rows are items (words, tokens),
columns features. Pure numpy, float64.

Linear CKA (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network
Representations Revisited") in its FEATURE-SPACE form: with column-centred X (n, p) and Y (n, q),

    HSIC(X, Y) = ||Y^T X||_F^2 / (n - 1)^2,    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

which equals tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) for the Gram matrices K = X X^T,
L = Y Y^T but needs p x q memory, never n x n, and streams over rows: the column sums and the
cross products X^T Y of row chunks add up exactly (`CrossProducts`), and the centred cross
product is X^T Y - n mean_x mean_y^T at the end.

    >>> linear_cka(x, y)                                  # x (n, p), y (n, q) -> float
    >>> linear_cka_matrix(xs, ys)                         # (La, n, p), (Lb, n, q) -> (La, Lb)
    >>> acc = CrossProducts(n_layers_a=30, width_a=576)   # within one run: ys is xs
    >>> for chunk in chunks: acc.update(chunk)            # each (30, rows, 576)
    >>> acc.cka()                                         # (30, 30)

Debiased CKA for few rows (stimuli): the unbiased HSIC estimator of Song, Smola, Gretton,
Bedo & Borgwardt (2012, "Feature Selection via Dependence Maximization"), as used for CKA by
Nguyen, Raghu & Kornblith (2021, "Do Wide and Deep Networks Learn the Same Things?"):

    HSIC_1(K, L) = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))

with K~, L~ the Gram matrices with their diagonals set to 0. It is written here in GRAM form
(n x n per layer, fine for tens to hundreds of rows): HSIC_1(K, L) = <U(K), U(L)> / (n (n-3)),
U the U-centring of Szekely & Rizzo (2014) (`u_centre`); the plain form uses the double
centring H K H instead (`double_centre`), and then <HKH, HLH> = ||Y_c^T X_c||_F^2.

Resampling, in Gram form (`gram_cka_matrix`, `bootstrap_cka`, `permutation_cka`): a bootstrap
replicate takes the Gram submatrix of the drawn rows (the linear Gram of duplicated rows is
exactly that submatrix); the permutation null permutes the rows of one side (its Gram's rows and
columns). The debiased estimator has no meaning for repeated rows (a pair of copies is a k(x, x)
term, exactly what it leaves out, and zeroing such pairs breaks its invariance to a shift of the
features), so its replicate is the estimator on the DISTINCT drawn rows (about 63% of them): an
unbiased estimate on a subsample, whose percentile interval is conservative (wider than a
with-replacement bootstrap's, by about sqrt(1/0.63) = 1.26). For corpora
(many rows), `weighted_linear_cka_matrix` gives the feature-space form with per-row weights
(bootstrap counts, e.g. of windows drawn as blocks: `block_row_counts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.metrics.resampling import bootstrap_counts

ESTIMATORS = ("linear", "debiased")


# ------------------------------------------------------------------------ feature-space form
def centre(x: np.ndarray) -> np.ndarray:
    """Columns centred over rows: (..., n, p) -> (..., n, p), float64."""
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=-2, keepdims=True)


def linear_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC of the linear kernel, feature-space form: ||Y_c^T X_c||_F^2 / (n - 1)^2.
    x: (n, p), y: (n, q)."""
    xc, yc = centre(x), centre(y)
    return float(np.sum((yc.T @ xc) ** 2)) / (xc.shape[0] - 1) ** 2


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of x (n, p) and y (n, q), feature-space form; NaN when a side is constant."""
    xc, yc = centre(x), centre(y)
    return float(_ratio(np.sum((yc.T @ xc) ** 2), np.linalg.norm(xc.T @ xc), np.linalg.norm(yc.T @ yc)))


def linear_cka_matrix(xs: np.ndarray, ys: np.ndarray | None = None) -> np.ndarray:
    """Linear CKA of every layer of xs against every layer of ys (feature-space form, one pass
    through `CrossProducts`): xs (La, n, p), ys (Lb, n, q) or None (ys = xs) -> (La, Lb)."""
    xs = np.asarray(xs)
    acc = CrossProducts(xs.shape[0], xs.shape[2], *(() if ys is None else (ys.shape[0], ys.shape[2])))
    acc.update(xs, ys)
    return acc.cka()


def weighted_linear_cka_matrix(xs: np.ndarray, ys: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Linear CKA matrices with per-row weights (bootstrap counts), feature-space form: the CKA of
    the data in which row r appears weights[b, r] times.

    xs (La, n, p), ys (Lb, n, q) or None (= xs), weights (B, n) -> (B, La, Lb). Memory: the
    cross products of one replicate, La p x Lb q; time B n (La p)(Lb q)."""
    xs = np.asarray(xs, dtype=np.float64)
    ys_ = xs if ys is None else np.asarray(ys, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    out = np.empty((weights.shape[0], xs.shape[0], ys_.shape[0]))
    for b, w in enumerate(weights):
        acc = CrossProducts(xs.shape[0], xs.shape[2], *(() if ys is None else (ys_.shape[0], ys_.shape[2])))
        acc.update(xs, ys, weights=w)
        out[b] = acc.cka()
    return out


class CrossProducts:
    """Streaming sums for linear CKA between the layers of two groups, A (La layers of width p)
    and B (Lb layers of width q), or of one group with itself (give no B sizes).

        >>> acc = CrossProducts(12, 768)                  # within one run: (12, 12) at the end
        >>> acc.update(chunk)                             # (12, rows, 768), any number of rows
        >>> other = CrossProducts(12, 768); other.update(rest); acc.merge(other)   # exact
        >>> acc.cka()                                     # (12, 12)
        >>> acc = CrossProducts(12, 768, 30, 576)         # between runs: update(a, b) -> (12, 30)

    Holds n, the column sums (La, p) and (Lb, q), and the cross products: within one group the
    upper block triangle of Z^T Z for Z = [X_1 .. X_L] (L(L+1)/2 blocks of p x p); between groups
    every X_i^T Y_j (La Lb blocks p x q) plus each side's own X_i^T X_i. All float64.
    Memory: within, 8 L(L+1)/2 p^2 bytes (30 layers x 576: 1.2 GiB); between,
    8 (La Lb p q + La p^2 + Lb q^2). `cka()` centres at the end:
    X_c^T Y_c = X^T Y - n mean_x mean_y^T.
    """

    def __init__(self, n_layers_a: int, width_a: int, n_layers_b: int | None = None, width_b: int | None = None,
                 debiased: bool = False):
        self.within = n_layers_b is None
        if debiased and not self.within:
            raise ValueError("the streamed debiased estimator is computed within one group only")
        self.la, self.p = int(n_layers_a), int(width_a)
        self.lb, self.q = (self.la, self.p) if self.within else (int(n_layers_b), int(width_b))
        self.n = 0.0   # float: weighted rows
        # every row is stored shifted by the first chunk's mean (per layer): CKA does not change,
        # and the final centring does not cancel large common offsets (rogue dimensions)
        self.shift_a: np.ndarray | None = None   # (La, p)
        self.shift_b: np.ndarray | None = None   # (Lb, q)
        self.sum_a = np.zeros((self.la, self.p))
        self.sum_b = self.sum_a if self.within else np.zeros((self.lb, self.q))
        if self.within:
            # block i holds X_i^T [X_i .. X_{L-1}]: (p, (L - i) p)
            self.blocks = [np.zeros((self.p, (self.la - i) * self.p)) for i in range(self.la)]
            # the debiased estimator's diagonal terms (`debiased_cka`): sum_r |z_ir|^2 |z_jr|^2 (L, L),
            # sum_r |z_ir|^2 (L,), sum_r z_ir |z_jr|^2 (L, L, p)
            self.debiased = debiased
            self.norm_products = np.zeros((self.la, self.la)) if debiased else None
            self.norm_sums = np.zeros(self.la) if debiased else None
            self.weighted_rows = np.zeros((self.la, self.la, self.p)) if debiased else None
        else:
            self.cross = np.zeros((self.la * self.p, self.lb * self.q))   # [X_i^T Y_j] blocks
            self.self_a = np.zeros((self.la, self.p, self.p))
            self.self_b = np.zeros((self.lb, self.q, self.q))

    def update(self, a: np.ndarray, b: np.ndarray | None = None, weights: np.ndarray | None = None) -> None:
        """Add rows: a (La, rows, p), b (Lb, rows, q) (between groups; omitted within one),
        optional weights (rows,) (each row counted that many times)."""
        a = np.asarray(a)
        if a.ndim != 3 or a.shape[0] != self.la or a.shape[2] != self.p:
            raise ValueError(f"chunk of group A must be ({self.la}, rows, {self.p}), got {a.shape}")
        rows = a.shape[1]
        if self.within and b is not None:
            raise ValueError("a within-group accumulator takes one group per update")
        if not self.within:
            if b is None:
                raise ValueError("a between-groups accumulator needs the chunk of group B too: update(a, b)")
            if np.shape(b) != (self.lb, rows, self.q):
                raise ValueError(f"chunk of group B must be ({self.lb}, {rows}, {self.q}), got {np.shape(b)}")
        if rows == 0:
            return
        if self.shift_a is None:
            self.shift_a = a.mean(axis=1, dtype=np.float64)
            if not self.within:
                self.shift_b = np.asarray(b).mean(axis=1, dtype=np.float64)
        za = np.empty((rows, self.la * self.p))                         # (rows, La p): shifted rows, float64
        for i in range(self.la):
            np.subtract(a[i], self.shift_a[i], out=za[:, i * self.p:(i + 1) * self.p])
        w = np.ones(rows) if weights is None else np.asarray(weights, dtype=np.float64)
        wza = za if weights is None else za * w[:, None]
        self.n += float(w.sum())
        self.sum_a += wza.sum(axis=0).reshape(self.la, self.p)
        if self.within:
            for i, block in enumerate(self.blocks):
                block += wza[:, i * self.p:(i + 1) * self.p].T @ za[:, i * self.p:]
            if self.debiased:
                if weights is not None:
                    raise ValueError("the debiased estimator takes no row weights (a repeated row is what it leaves out)")
                rows_by_layer = za.reshape(rows, self.la, self.p)
                norms = np.einsum("rip,rip->ri", rows_by_layer, rows_by_layer)        # (rows, L)
                self.norm_products += norms.T @ norms
                self.norm_sums += norms.sum(axis=0)
                self.weighted_rows += np.einsum("rip,rj->ijp", rows_by_layer, norms)
            return
        b = np.asarray(b, dtype=np.float64) - self.shift_b[:, None, :]
        zb = b.transpose(1, 0, 2).reshape(rows, self.lb * self.q)     # (rows, Lb q)
        self.sum_b += (zb * w[:, None]).sum(axis=0).reshape(self.lb, self.q)
        for i in range(self.la):   # per layer of A: a (p, Lb q) temporary, not a second (La p, Lb q)
            self.cross[i * self.p:(i + 1) * self.p] += wza[:, i * self.p:(i + 1) * self.p].T @ zb
        for i in range(self.la):
            block = za[:, i * self.p:(i + 1) * self.p]
            self.self_a[i] += wza[:, i * self.p:(i + 1) * self.p].T @ block
        for j in range(self.lb):
            self.self_b[j] += (b[j] * w[:, None]).T @ b[j]

    def merge(self, other: "CrossProducts") -> None:
        """Add another accumulator's rows (same shapes): the sums add exactly."""
        if getattr(self, "debiased", False) or getattr(other, "debiased", False):
            raise ValueError("accumulators of the debiased estimator are not merged (their terms depend on the shift)")
        if (other.within, other.la, other.p, other.lb, other.q) != (self.within, self.la, self.p, self.lb, self.q):
            raise ValueError("cannot merge accumulators of different shapes")
        if other.shift_a is None:
            return
        if self.shift_a is None:
            self.shift_a, self.shift_b = other.shift_a.copy(), None if other.shift_b is None else other.shift_b.copy()
        other = other._shifted(self.shift_a, self.shift_b)
        self.n += other.n
        self.sum_a += other.sum_a
        if self.within:
            for mine, theirs in zip(self.blocks, other.blocks):
                mine += theirs
            return
        self.sum_b += other.sum_b
        self.cross += other.cross
        self.self_a += other.self_a
        self.self_b += other.self_b

    def _shifted(self, shift_a: np.ndarray, shift_b: np.ndarray | None) -> "CrossProducts":
        """A copy of these sums as if every row had been shifted by `shift_a` (and `shift_b`):
        with d = old shift - new shift, sum(x + d) = S + n d and
        sum (x + d_a)(y + d_b)^T = C + S_x d_b^T + d_a S_y^T + n d_a d_b^T."""
        out = CrossProducts(self.la, self.p, *(() if self.within else (self.lb, self.q)))
        out.n, out.shift_a, out.shift_b = self.n, shift_a, shift_b
        da = (self.shift_a - shift_a).reshape(-1)                       # (La p,)
        sa = self.sum_a.reshape(-1)
        out.sum_a = self.sum_a + self.n * (self.shift_a - shift_a)
        if self.within:
            out.sum_b = out.sum_a
            for i, block in enumerate(self.blocks):
                rows_i, cols = slice(i * self.p, (i + 1) * self.p), slice(i * self.p, None)
                out.blocks[i] = (block + np.outer(sa[rows_i], da[cols]) + np.outer(da[rows_i], sa[cols])
                                 + self.n * np.outer(da[rows_i], da[cols]))
            return out
        db = (self.shift_b - shift_b).reshape(-1)
        sb = self.sum_b.reshape(-1)
        out.sum_b = self.sum_b + self.n * (self.shift_b - shift_b)
        out.cross = self.cross + np.outer(sa, db) + np.outer(da, sb) + self.n * np.outer(da, db)
        for side, (sums, d, n_layers, width) in {"a": (self.sum_a, self.shift_a - shift_a, self.la, self.p),
                                                 "b": (self.sum_b, self.shift_b - shift_b, self.lb, self.q)}.items():
            own = self.self_a if side == "a" else self.self_b
            new = own + (np.einsum("ip,iq->ipq", sums, d) + np.einsum("ip,iq->ipq", d, sums)
                         + self.n * np.einsum("ip,iq->ipq", d, d))
            setattr(out, f"self_{side}", new)
        return out

    def centred_cross(self, i: int, j: int) -> np.ndarray:
        """X_i,c^T Y_j,c: (p, q), the centred cross product of layer i of A and layer j of B."""
        mean_a, mean_b = self.sum_a[i] / self.n, self.sum_b[j] / self.n
        if self.within:
            lo, hi = min(i, j), max(i, j)
            block = self.blocks[lo][:, (hi - lo) * self.p:(hi - lo + 1) * self.p]
            block = block if i <= j else block.T
        else:
            block = self.cross[i * self.p:(i + 1) * self.p, j * self.q:(j + 1) * self.q]
        return block - self.n * np.outer(mean_a, mean_b)

    def _self_norms(self) -> tuple[np.ndarray, np.ndarray]:
        if self.within:
            norms = np.array([np.linalg.norm(self.centred_cross(i, i)) for i in range(self.la)])
            return norms, norms
        norm_a = np.array([np.linalg.norm(self.self_a[i] - self.n * np.outer(m, m))
                           for i, m in enumerate(self.sum_a / self.n)])
        norm_b = np.array([np.linalg.norm(self.self_b[j] - self.n * np.outer(m, m))
                           for j, m in enumerate(self.sum_b / self.n)])
        return norm_a, norm_b

    def hsic(self) -> np.ndarray:
        """(La, Lb): ||X_i,c^T Y_j,c||_F^2 / (n - 1)^2."""
        out = np.empty((self.la, self.lb))
        for i in range(self.la):
            for j in range(i if self.within else 0, self.lb):
                out[i, j] = np.sum(self.centred_cross(i, j) ** 2)
                if self.within:
                    out[j, i] = out[i, j]
        return out / (self.n - 1) ** 2

    def debiased_cka(self) -> np.ndarray:
        """(L, L) debiased CKA (the unbiased HSIC_1 of the module docstring) in feature space, from
        the cross products and the diagonal terms of an accumulator made with `debiased=True`.
        With K = Z_i Z_i^T, L = Z_j Z_j^T of the (shifted) rows, S the column sums, N_r = |z_r|^2:
        tr(K~ L~) = ||Z_i^T Z_j||^2 - sum_r N_ir N_jr; 1^T K~ 1 = |S_i|^2 - sum_r N_ir;
        1^T K~ L~ 1 = S_i^T Z_i^T Z_j S_j - S_i . sum_r z_ir N_jr - S_j . sum_r z_jr N_ir + sum_r N_ir N_jr.
        The estimator is unchanged by the shift, which keeps the sums small."""
        if not (self.within and getattr(self, "debiased", False)):
            raise ValueError("debiased_cka needs a within-group accumulator made with debiased=True")
        n = self.n
        if n < 4:
            raise ValueError(f"the debiased estimator needs at least 4 rows, got {n:g}")
        sums, products = self.sum_a, self.norm_products
        ones = np.einsum("ip,ip->i", sums, sums) - self.norm_sums                # 1^T K~_i 1: (L,)
        hsic = np.empty((self.la, self.la))
        for i in range(self.la):
            for j in range(i, self.la):
                block = self.blocks[i][:, (j - i) * self.p:(j - i + 1) * self.p]   # Z_i^T Z_j, uncentred
                trace = np.sum(block**2) - products[i, j]
                sandwich = (sums[i] @ block @ sums[j] - sums[i] @ self.weighted_rows[i, j]
                            - sums[j] @ self.weighted_rows[j, i] + products[i, j])
                hsic[i, j] = hsic[j, i] = (trace + ones[i] * ones[j] / ((n - 1) * (n - 2))
                                           - 2 / (n - 2) * sandwich) / (n * (n - 3))
        diagonal = np.sqrt(np.clip(np.diag(hsic), 0, None))
        return _ratio(hsic, diagonal[:, None], diagonal[None, :])

    def cka(self) -> np.ndarray:
        """(La, Lb) linear CKA; NaN where a layer is constant over the rows."""
        if self.n < 2:
            raise ValueError(f"CKA needs at least 2 rows, got {self.n:g}")
        norm_a, norm_b = self._self_norms()
        return _ratio(self.hsic() * (self.n - 1) ** 2, norm_a[:, None], norm_b[None, :])


def accumulator_bytes(n_layers_a: int, width_a: int, n_layers_b: int | None = None, width_b: int | None = None) -> int:
    """Bytes `CrossProducts` holds (float64), without the per-chunk temporaries."""
    if n_layers_b is None:
        return 8 * (n_layers_a * (n_layers_a + 1) // 2 * width_a**2 + n_layers_a * width_a)
    return 8 * (n_layers_a * n_layers_b * width_a * width_b + n_layers_a * width_a**2 + n_layers_b * width_b**2
                + n_layers_a * width_a + n_layers_b * width_b)


# -------------------------------------------------------------------------------- Gram form
def gram(xs: np.ndarray) -> np.ndarray:
    """Linear Gram matrices: (L, n, p) -> (L, n, n), K = X X^T (uncentred), float64."""
    xs = np.asarray(xs, dtype=np.float64)
    return xs @ xs.transpose(0, 2, 1)


def double_centre(k: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T / n: (..., n, n) -> (..., n, n)."""
    k = np.asarray(k, dtype=np.float64)
    return (k - k.mean(axis=-1, keepdims=True) - k.mean(axis=-2, keepdims=True)
            + k.mean(axis=(-2, -1), keepdims=True))


def u_centre(k: np.ndarray) -> np.ndarray:
    """U-centring (Szekely & Rizzo 2014): (..., n, n) -> (..., n, n) with, for i != j,
    U_ij = K~_ij - r_i / (n-2) - r_j / (n-2) + s / ((n-1)(n-2)), and U_ii = 0, where K~ is K with a
    zero diagonal, r its row sums and s its total. Then <U(K), U(L)> / (n (n-3)) is Song et al.'s
    unbiased HSIC_1(K, L). Needs n >= 4."""
    k = np.array(k, dtype=np.float64)
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"the debiased estimator needs at least 4 rows, got {n}")
    diagonal = np.arange(n)
    k[..., diagonal, diagonal] = 0.0
    rows = k.sum(axis=-1) / (n - 2)                                   # (..., n)
    rows -= rows.sum(axis=-1, keepdims=True) / (2 * (n - 1))
    k -= rows[..., :, None] + rows[..., None, :]
    k[..., diagonal, diagonal] = 0.0
    return k


def centred_grams(grams: np.ndarray, estimator: str) -> np.ndarray:
    """(L, n, n) Gram matrices -> centred ones: double centring ("linear") or U-centring ("debiased")."""
    check_estimator(estimator)
    return double_centre(grams) if estimator == "linear" else u_centre(grams)


def gram_cka_matrix(grams_a: np.ndarray, grams_b: np.ndarray | None = None, estimator: str = "linear") -> np.ndarray:
    """CKA of every layer of A against every layer of B from their Gram matrices:
    (La, n, n), (Lb, n, n) or None (= A) -> (La, Lb). "linear": Kornblith et al.'s CKA (equals the
    feature-space form); "debiased": Song et al.'s unbiased HSIC in place of HSIC."""
    ca = centred_grams(grams_a, estimator)
    cb = ca if grams_b is None else centred_grams(grams_b, estimator)
    return _cka_from_centred(ca, cb)


def _cka_from_centred(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    fa = ca.reshape(ca.shape[0], -1)
    fb = cb.reshape(cb.shape[0], -1)
    cross = fa @ fb.T                                                 # (La, Lb) <Ka, Kb>
    norm_a = np.sqrt(np.maximum(np.einsum("ij,ij->i", fa, fa), 0))
    norm_b = np.sqrt(np.maximum(np.einsum("ij,ij->i", fb, fb), 0))
    return _ratio(cross, norm_a[:, None], norm_b[None, :])


def bootstrap_cka(grams_a: np.ndarray, grams_b: np.ndarray | None, indices: np.ndarray,
                  estimator: str = "linear") -> np.ndarray:
    """CKA matrices of bootstrap replicates: rows `indices[b]` drawn (with repeats).

    grams_a (La, n, n), grams_b (Lb, n, n) or None (= A), indices (B, m) -> (B, La, Lb). A
    replicate's Gram is the submatrix K[idx][:, idx]; with "debiased", of the distinct drawn rows
    only (see the module docstring; NaN with fewer than 4)."""
    check_estimator(estimator)
    indices = np.asarray(indices)
    out = np.empty((indices.shape[0], grams_a.shape[0], (grams_a if grams_b is None else grams_b).shape[0]))
    for b, idx in enumerate(indices):
        if estimator == "debiased":
            idx = np.unique(idx)
            if idx.size < 4:
                out[b] = np.nan
                continue
        ca = centred_grams(grams_a[:, idx][:, :, idx], estimator)
        cb = ca if grams_b is None else centred_grams(grams_b[:, idx][:, :, idx], estimator)
        out[b] = _cka_from_centred(ca, cb)
    return out


def permutation_cka(grams_a: np.ndarray, grams_b: np.ndarray | None, permutations: np.ndarray,
                    estimator: str = "linear") -> np.ndarray:
    """The permutation null: CKA with the rows of B permuted (B = A when grams_b is None).

    grams_a (La, n, n), grams_b (Lb, n, n) or None, permutations (P, n) -> (P, La, Lb)."""
    ca = centred_grams(grams_a, estimator)
    cb = ca if grams_b is None else centred_grams(grams_b, estimator)
    # permuting rows before centring = permuting the centred Gram's rows and columns (both centrings
    # are equivariant), so centre once
    out = np.empty((len(permutations), ca.shape[0], cb.shape[0]))
    for b, perm in enumerate(np.asarray(permutations)):
        out[b] = _cka_from_centred(ca, cb[:, perm][:, :, perm])
    return out


def block_row_counts(block_of_row: np.ndarray, block_draws: np.ndarray) -> np.ndarray:
    """Row weights of a block bootstrap: each row counted as often as its block was drawn.

    block_of_row (n,) block index 0..n_blocks-1 of each row (e.g. its window), block_draws
    (B, n_blocks) drawn block indices (`laminae.metrics.resampling.bootstrap_indices(n_blocks,
    B, rng)`) -> (B, n) counts, for `weighted_linear_cka_matrix`."""
    block_of_row = np.asarray(block_of_row, dtype=np.int64)
    n_blocks = int(block_of_row.max()) + 1
    counts = bootstrap_counts(block_draws, n_blocks)                 # (B, n_blocks)
    return counts[:, block_of_row]


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def _ratio(numerator, norm_a, norm_b) -> np.ndarray:
    denominator = norm_a * norm_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def best_match(cka: np.ndarray) -> np.ndarray:
    """For each row layer (A), the column layer (B) of highest CKA: (La, Lb) -> (La,) int
    (ties: the first). NaN rows give -1."""
    cka = np.asarray(cka, dtype=np.float64)
    finite = np.isfinite(cka).any(axis=1)
    return np.where(finite, np.argmax(np.where(np.isfinite(cka), cka, -np.inf), axis=1), -1)


def relative_depth(layers: Sequence[int] | np.ndarray, n_layers: int) -> np.ndarray:
    """layer / (n_layers - 1): (k,) -> (k,) float (0 for a one-layer model)."""
    return np.asarray(layers, dtype=np.float64) / max(n_layers - 1, 1)
