"""The compressed format of a unified weight: find its blocks, verify them, pack them, unpack them.

A conv2d (O, I, kh, kw) or linear (O, K) weight is seen as a matrix W[O, K] in one of two layouts:

- ``flat``: PyTorch's ``weight.reshape(O, -1)`` (K index = c*kh*kw + r*kw + s), blocks may span taps;
- ``tap``: per kernel tap, ``weight.permute(0, 2, 3, 1).reshape(O, -1)`` (K index = (r*kw + s)*I + c),
  so a block (``cols`` must divide I) stays inside one tap. For 1x1 convs and linears both are the same.

W is tiled into ``rows x cols`` blocks. Every block must be either *pruned* (all zero) or *unified*
(equal magnitudes: ``w = scale * sign``), within a tolerance relative to the layer's largest weight;
*free* (dense) blocks are accepted only when the spec allows them. Verification never trusts metadata:
a spec that names the wrong block shape or lies about the sparsity makes the layer stay dense.

Encoding (BSR over blocks, block rows in order):
``indptr[nbr+1]`` (int32), ``indices[nnzb]`` (int32 block columns), ``scales[nnzb]`` (float32, the mean
magnitude), ``signs`` (uint8, 1 bit per weight, 1 = negative, little-endian within a byte, blocks in
BSR order, each block row-major). Free blocks go in a separate BSR part with full float32 values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .errors import UserError

LAYOUTS = ("tap", "flat")
# Block shapes tried when the file carries no spec, largest area first (the biggest that verifies wins).
CANDIDATE_BLOCKS = sorted(
    [(1, 2), (2, 1), (1, 4), (4, 1), (2, 2), (1, 8), (8, 1), (2, 4), (4, 2), (1, 16), (16, 1), (4, 4),
     (2, 8), (8, 2), (4, 8), (8, 4), (8, 8)],
    key=lambda b: (-b[0] * b[1], b),
)
DEFAULT_RTOL = 1e-5


@dataclass(frozen=True)
class BlockSpec:
    """What a layer's blocks should be: shape over the matrix view, layout, and optional claims."""

    rows: int
    cols: int
    layout: str = "tap"
    sparsity: float | None = None  # claimed fraction of pruned blocks; checked, never trusted
    allow_free: bool = False  # may non-unified (dense) blocks remain?

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def describe(self) -> str:
        return f"{self.rows}x{self.cols}/{self.layout}"


@dataclass
class UnifiedWeight:
    """A weight in the compressed format (see the module docstring for the arrays)."""

    weight_shape: tuple[int, ...]
    spec: BlockSpec
    indptr: np.ndarray
    indices: np.ndarray
    scales: np.ndarray
    signs: np.ndarray
    free_indptr: np.ndarray
    free_indices: np.ndarray
    free_values: np.ndarray

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return matrix_shape(self.weight_shape)

    @property
    def grid(self) -> tuple[int, int]:
        """Blocks per column and per row of the matrix view."""
        o, k = self.matrix_shape
        return (o // self.spec.rows, k // self.spec.cols)

    @property
    def nnzb(self) -> int:
        return int(self.indices.size)

    @property
    def sparsity(self) -> float:
        """Fraction of blocks that are pruned (neither unified nor free)."""
        total = self.grid[0] * self.grid[1]
        return 1.0 - (self.nnzb + int(self.free_indices.size)) / total

    @property
    def nbytes(self) -> int:
        parts = (self.indptr, self.indices, self.scales, self.signs, self.free_indptr, self.free_indices,
                 self.free_values)
        return int(sum(a.nbytes for a in parts))

    def block_signs(self) -> np.ndarray:
        """Signs as (nnzb, rows, cols) of +-1 float32."""
        n = self.spec.rows * self.spec.cols
        bits = np.unpackbits(self.signs, bitorder="little")[: self.nnzb * n]
        return (1.0 - 2.0 * bits.astype(np.float32)).reshape(self.nnzb, self.spec.rows, self.spec.cols)


@dataclass
class Analysis:
    """The verdict on one weight: its encoding, or why it stays dense."""

    encoded: UnifiedWeight | None
    reason: str
    tried: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.encoded is not None


def matrix_shape(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(O, K)``: the matrix view of a linear ``(O, K)`` or conv2d ``(O, I, kh, kw)`` weight (K = I*kh*kw),
    the same in both layouts (they differ only in the order of K)."""
    return (int(weight_shape[0]), int(np.prod(weight_shape[1:])))


def block_fits(weight_shape: tuple[int, ...], block: tuple[int, int], layout: str) -> str | None:
    """Why ``block`` does not tile a weight of ``weight_shape`` in ``layout``, or None when it does.

    ``tap`` blocks must not straddle kernel taps, so their columns must divide the input channels."""
    o, k = matrix_shape(weight_shape)
    rows, cols = block
    if len(weight_shape) == 4 and layout == "tap" and weight_shape[1] % cols:
        return f"{cols} cols do not divide its {weight_shape[1]} input channels"
    if o % rows or k % cols:
        return f"a {rows}x{cols} block does not tile its {o}x{k} matrix"
    return None


# The tiling below works on numpy arrays and torch tensors alike (the unify side calls it with tensors,
# the compiler side with arrays): both have ``reshape``; only the axis permutation is spelled differently.
def _permute(array: Any, axes: tuple[int, ...]) -> Any:
    return array.permute(axes) if hasattr(array, "permute") else array.transpose(axes)


def _contiguous(array: Any) -> Any:
    return array.contiguous() if hasattr(array, "contiguous") else np.ascontiguousarray(array)


def to_matrix(weight: Any, layout: str) -> Any:
    """The (O, K) matrix view of a linear or conv2d weight in ``layout`` (array or tensor, as given)."""
    if len(weight.shape) == 4 and layout == "tap":
        weight = _permute(weight, (0, 2, 3, 1))
    return _contiguous(weight.reshape(weight.shape[0], -1))


def from_matrix(matrix: Any, weight_shape: tuple[int, ...], layout: str) -> Any:
    """Inverse of ``to_matrix``."""
    if len(weight_shape) == 4 and layout == "tap":
        o, i, kh, kw = weight_shape
        return _contiguous(_permute(matrix.reshape(o, kh, kw, i), (0, 3, 1, 2)))
    return matrix.reshape(tuple(weight_shape))


def tiles(matrix: Any, block: tuple[int, int]) -> Any:
    """``(nbr, nbc, rows*cols)``: the matrix's blocks, block rows in order, each block row-major."""
    (o, k), (rows, cols) = matrix.shape, block
    return _permute(matrix.reshape(o // rows, rows, k // cols, cols), (0, 2, 1, 3)).reshape(
        o // rows, k // cols, rows * cols)


def untile(blocks: Any, block: tuple[int, int]) -> Any:
    """Inverse of ``tiles``."""
    (nbr, nbc, _), (rows, cols) = blocks.shape, block
    return _permute(blocks.reshape(nbr, nbc, rows, cols), (0, 2, 1, 3)).reshape(nbr * rows, nbc * cols)


def to_blocks(weight: Any, block: tuple[int, int], layout: str = "tap") -> Any:
    """``(N, rows*cols)``: every block of ``weight`` in BSR order (see ``tiles``); a pure reshape/permute."""
    return tiles(to_matrix(weight, layout), block).reshape(-1, block[0] * block[1])


def from_blocks(blocks: Any, weight_shape: tuple[int, ...], block: tuple[int, int], layout: str = "tap") -> Any:
    """Inverse of ``to_blocks``: the weight of ``weight_shape`` whose blocks are ``blocks``."""
    o, k = matrix_shape(weight_shape)
    grid = blocks.reshape(o // block[0], k // block[1], block[0] * block[1])
    return from_matrix(untile(grid, block), weight_shape, layout)


def _csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and column indices of the True entries of a 2D mask, row-major."""
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    return indptr, np.nonzero(mask)[1].astype(np.int32)


def verify(weight: np.ndarray, spec: BlockSpec, rtol: float = DEFAULT_RTOL) -> Analysis:
    """Check every block of ``weight`` against ``spec`` and encode it, or say why it does not fit."""
    weight = np.asarray(weight, dtype=np.float32)
    if spec.layout not in LAYOUTS:
        return Analysis(None, f"unknown layout {spec.layout!r}")
    misfit = block_fits(weight.shape, spec.shape, spec.layout)
    if misfit:
        return Analysis(None, f"block {spec.describe()}: {misfit}")
    blocks = tiles(to_matrix(weight, spec.layout), spec.shape)
    mags = np.abs(blocks)
    tol = rtol * max(float(mags.max(initial=0.0)), np.finfo(np.float32).tiny)
    hi, lo = mags.max(axis=2), mags.min(axis=2)
    pruned = hi <= tol
    unified = ~pruned & (hi - lo <= tol)
    free = ~pruned & ~unified
    if free.any() and not spec.allow_free:
        r, c = np.argwhere(free)[0]
        return Analysis(None, f"block {spec.describe()} ({r},{c}) is neither zero nor unified "
                              f"(|w| in [{lo[r, c]:.3g}, {hi[r, c]:.3g}]); {int(free.sum())} such blocks")
    measured = float(pruned.mean())
    if spec.sparsity is not None and abs(spec.sparsity - measured) > 0.01:
        return Analysis(None, f"spec claims sparsity {spec.sparsity:.3f} but {spec.describe()} blocks "
                              f"have {measured:.3f}")
    return Analysis(_encode(blocks, unified, free, weight.shape, spec), "verified")


def _encode(tiles: np.ndarray, unified: np.ndarray, free: np.ndarray, weight_shape: tuple[int, ...],
            spec: BlockSpec) -> UnifiedWeight:
    indptr, indices = _csr(unified)
    blocks = tiles[unified]  # (nnzb, n) in BSR order: np boolean indexing is row-major
    scales = np.abs(blocks.astype(np.float64)).mean(axis=1).astype(np.float32)
    signs = np.packbits(np.signbit(blocks).reshape(-1), bitorder="little")
    free_indptr, free_indices = _csr(free)
    free_values = tiles[free].reshape(-1, spec.rows, spec.cols).astype(np.float32)
    return UnifiedWeight(tuple(weight_shape), spec, indptr, indices, scales, signs, free_indptr,
                         free_indices, free_values)


def decode(enc: UnifiedWeight) -> np.ndarray:
    """The dense float32 weight a compressed one stands for (exact inverse of encoding)."""
    rows, cols = enc.spec.shape
    nbr, nbc = enc.grid
    n = rows * cols
    grid = np.zeros((nbr, nbc, n), dtype=np.float32)
    block_rows = np.repeat(np.arange(nbr), np.diff(enc.indptr))
    grid[block_rows, enc.indices] = enc.block_signs().reshape(-1, n) * enc.scales[:, None]
    free_rows = np.repeat(np.arange(nbr), np.diff(enc.free_indptr))
    grid[free_rows, enc.free_indices] = enc.free_values.reshape(-1, n)
    return from_matrix(untile(grid, (rows, cols)), enc.weight_shape, enc.spec.layout)


def weight_fingerprint(weight: np.ndarray) -> str:
    """Identity of a weight by value: how the compiler finds the module path (and so the block spec) of a
    constant in the imported graph, whose names the importer does not keep."""
    data = np.ascontiguousarray(weight, dtype=np.float32)
    return hashlib.sha1(repr(data.shape).encode() + data.tobytes()).hexdigest()


def candidate_specs(weight_shape: tuple[int, ...]) -> Iterable[BlockSpec]:
    """Block specs worth trying on a weight with no metadata, most compressive first."""
    layouts = LAYOUTS if len(weight_shape) == 4 and np.prod(weight_shape[2:]) > 1 else LAYOUTS[:1]
    o, k = matrix_shape(weight_shape)
    for rows, cols in CANDIDATE_BLOCKS:
        if o % rows == 0 and k % cols == 0:
            for layout in layouts:
                yield BlockSpec(rows, cols, layout)


def _pair_verdicts(weight: np.ndarray, rtol: float) -> dict[tuple[int, int, str], bool]:
    """Whether 1x2 and 2x1 blocks verify, per layout: a cheap exact pre-filter (see ``_pairs_allow``)."""
    o, k = matrix_shape(tuple(weight.shape))
    layouts = LAYOUTS if weight.ndim == 4 else LAYOUTS[:1]
    return {(r, c, layout): o % r == 0 and k % c == 0 and verify(weight, BlockSpec(r, c, layout), rtol).ok
            for r, c in ((1, 2), (2, 1)) for layout in layouts}


def _pairs_allow(pairs: dict[tuple[int, int, str], bool], spec: BlockSpec) -> bool:
    """A block with an even side verifies only if the 1x2 (or 2x1) blocks inside it do, so a dense
    weight is rejected after at most four passes instead of thirty."""
    if spec.cols % 2 == 0 and not pairs.get((1, 2, spec.layout), False):
        return False
    return not (spec.rows % 2 == 0 and not pairs.get((2, 1, spec.layout), False))


def analyze(weight: np.ndarray, spec: BlockSpec | None = None, rtol: float = DEFAULT_RTOL) -> Analysis:
    """Encode ``weight`` by its spec if given, else by the largest candidate block shape that verifies."""
    if spec is not None:
        result = verify(weight, spec, rtol)
        result.tried = [spec.describe()]
        return result
    tried = []
    pairs = _pair_verdicts(weight, rtol)
    if not any(pairs.values()):
        return Analysis(None, "not unified: no 1x2 or 2x1 block verifies, so no larger block can", tried)
    for candidate in candidate_specs(tuple(weight.shape)):
        if not _pairs_allow(pairs, candidate):
            continue
        tried.append(candidate.describe())
        result = verify(weight, candidate, rtol)
        if result.ok:
            result.tried = tried
            return result
    return Analysis(None, "not unified: no block shape verifies" if tried else "no block shape tiles it", tried)


def spec_from_metadata(entry: dict[str, Any]) -> BlockSpec:
    """A ``BlockSpec`` from one layer record of the ``unify`` metadata (schema: ``unify/export.py``)."""
    rows, cols = (int(v) for v in entry["block"])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"bad block shape {entry['block']}")
    sparsity = entry.get("sparsity")
    unified = float(entry.get("unified_fraction", entry.get("target_unified", 1.0)))
    return BlockSpec(rows, cols, str(entry.get("layout", "tap")),
                     None if sparsity is None else float(sparsity), allow_free=unified < 1.0)


def specs_from_metadata(metadata: dict[str, Any]) -> dict[str, BlockSpec]:
    """Per-layer specs (module path -> spec) from a TorchScript file's ``unify`` metadata, if any.

    Only the format is checked here; whether the weights agree is ``verify``'s job."""
    specs = {}
    for entry in metadata.get("unify", {}).get("layers", []):
        try:
            specs[str(entry["name"])] = spec_from_metadata(entry)
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"bad block spec in the model's unify metadata: {entry!r:.80} ({err!r})") from None
    return specs


__all__ = ["Analysis", "BlockSpec", "CANDIDATE_BLOCKS", "LAYOUTS", "UnifiedWeight", "analyze", "block_fits",
           "decode", "from_blocks", "from_matrix", "matrix_shape", "spec_from_metadata", "specs_from_metadata",
           "tiles", "to_blocks", "to_matrix", "untile", "verify", "weight_fingerprint"]
