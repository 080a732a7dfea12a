"""The emulated aarch64 device: cached set-up (``setup``), the qemu-hosted RPC server and its state
(``emulator``), process groups for every server we start (``procs``), and the files that run inside
the guest (``guest/``: the RPC server script and the instruction-counting qemu plugin)."""
