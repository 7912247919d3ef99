"""The development world: what builds, trains and measures cliprnn, never what runs it.

Generated scenes and clips with exact masks (``scenes``, ``clips``), random CLIPs for tests
(``random_clip``), the miniature CLIPs' training (``mini_clip``), mIoU (``metrics``) and the
benchmarks (``bench``, the ``bench-*`` commands of ``cliprnn.dev.cli``). The runtime library
(the rest of ``cliprnn``) never imports this package.
"""
