"""The ``mrcnn-edge`` command line: argument parsing and printing only; the work is in library calls.

:mod:`.cli` holds the one table of subcommands; each other module adds the arguments of its
commands and calls into ``mrcnn_edge.model``, ``mrcnn_edge.data``, ``mrcnn_edge.export`` or
``mrcnn_edge.runtime``. Building the parser imports no torch.
"""
