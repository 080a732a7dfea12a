"""Block tiling: the one definition lives in ``tvm_unify.format`` (shared with the compiler passes);
this module only keeps the old import path working for callers outside the unify package."""

from ..format import from_blocks, to_blocks

__all__ = ["from_blocks", "to_blocks"]
