"""Import ``tvm.s_tir.tensor_intrin`` in seconds instead of minutes, for meta-schedule's processes.

Meta-schedule imports ``tvm.s_tir.tensor_intrin`` in every ``TuneContext`` and again in each builder
worker (``LocalBuilder`` starts fresh workers for every batch). That module defines about 250 TVMScript
``prim_func`` s, and TVMScript's decorator calls ``inspect.stack()`` for each: source context for every
frame of the import chain, where each frozen ``importlib`` frame makes ``inspect.getmodule`` scan all of
``sys.modules``. Measured on the 2-core CI-class machine: 70-200 s per process, longer than the builder's
timeout, so every dense candidate failed to build.

The parser uses the stack only for frame objects (closure variables) and the source line of the third
frame (``is_defined_in_class``). :func:`light_stack` gives exactly those, read from the frames and
``linecache``, so the parsed intrinsics are the same; it replaces ``inspect.stack`` only while the
module is imported.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from typing import Iterator

_CONTEXT_FRAMES = 3  # is_defined_in_class reads code_context of frames[2]


def light_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)`` of the caller without ``getmodule`` lookups: source lines only for the
    first frames, straight from ``linecache``."""
    frames, frame = [], sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        lines = None
        if context > 0 and len(frames) < _CONTEXT_FRAMES:
            lines = [linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals)]
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, lines,
                                        0 if lines else None))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def _fast_inspect_stack() -> Iterator[None]:
    original = inspect.stack
    inspect.stack = light_stack
    try:
        yield
    finally:
        inspect.stack = original


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (a no-op once imported). Also the ``initializer`` of
    meta-schedule's builder and runner workers, so their own import of it is instant."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with _fast_inspect_stack():
        import tvm.s_tir.tensor_intrin  # noqa: F401  pylint: disable=unused-import
