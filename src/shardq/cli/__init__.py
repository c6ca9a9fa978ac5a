"""The ``shardq`` command line: ``query``, ``check`` and ``demo``."""
