"""The suite's plugins, and hypothesis's profiles.

The property-based tests draw the same examples on every run by default
(``derandomize``): a fresh clone goes green or red for what it contains, not
for what a new draw happens to find. ``HYPOTHESIS_PROFILE=explore`` draws new
examples each run (and ``python -m tests.differential.sqlite_survey --seed N``
surveys many); whatever they find is kept as a hand-written case.
"""

import os

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.shards",
    "tests.fixtures.tpch",
    "tests.fixtures.edge",
    "tests.fixtures.sqlite_edge",
    "tests.fixtures.proxy",
]

settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
