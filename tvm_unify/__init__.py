"""tvm-unify: micro-structured weight unification (ADMM) compiled by TVM for edge devices."""

__version__ = "0.1.0"
