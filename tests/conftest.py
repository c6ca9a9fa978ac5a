pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.shards",
    "tests.fixtures.tpch",
    "tests.fixtures.edge",
    "tests.fixtures.sqlite_edge",
]
