"""Running compiled libraries: locally in a Relax VM (``local``), on devices over TVM RPC (``rpc``),
timed and checked (``bench``, ``reference``)."""
