"""Fast TVMScript macro calls: two things TVM 0.27's parser does on every ``T.macro``/``T.inline`` call,
done once or without reading source files. The kernels call macros hundreds of times per kernel.

- ``ScriptMacro._find_parser_def`` finds the active parser by scanning the caller frames' globals with
  ``inspect.getouterframes``, which also reads the source line of every frame; macros are called from
  deep inside the recursive parser (a hundred frames and more). Profiled on a unified MobileNetV2, 650
  of 740 seconds of compile time went there. Walking ``f_back`` performs the same lookup, over the same
  frames in the same order, with no source access.
- ``ScriptMacro.get_macro_def`` re-parses the macro's source into a doc AST on every call; the
  definition never changes, so it is parsed once per macro (the parser only reads the tree).
"""

from __future__ import annotations

import inspect

from tvm.script.parser.core.parser import ScriptMacro

_ORIGINAL = (ScriptMacro._find_parser_def, ScriptMacro.get_macro_def)


def _find_parser_def(self: ScriptMacro):
    """The parser object of the innermost frame whose globals hold one (as TVM's own lookup)."""
    frame = inspect.currentframe()
    while frame is not None:
        parser = frame.f_globals.get(ScriptMacro.parser_object_name)
        if parser is not None:
            return parser
        frame = frame.f_back
    raise RuntimeError(f"{ScriptMacro.parser_object_name} not available")


def _get_macro_def(self: ScriptMacro):
    """The macro's function definition, parsed on first use."""
    if "_tvm_unify_def" not in self.__dict__:
        self._tvm_unify_def = _ORIGINAL[1](self)
    return self._tvm_unify_def


def install() -> None:
    """Use both shortcuts for every macro call in this process (idempotent)."""
    ScriptMacro._find_parser_def, ScriptMacro.get_macro_def = _find_parser_def, _get_macro_def


def uninstall() -> None:
    """Back to TVM's own methods (tests compare the two)."""
    ScriptMacro._find_parser_def, ScriptMacro.get_macro_def = _ORIGINAL
