"""Operators of the ``@cliprnn/clip-as-rnn`` plugin: thin adapters over cliprnn.fiftyone."""
