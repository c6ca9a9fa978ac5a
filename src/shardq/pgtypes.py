"""PostgreSQL's built-in type OIDs (``pg_type.dat``): fixed, so no catalog lookup.

One table for the modules that read a column's ``type_code`` (psycopg's and
ADBC's descriptions carry it): the Arrow mapping, the columnar merge, the
COPY-or-INSERT check of ``executemany``.
"""

from __future__ import annotations

BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIME = 114, 700, 701, 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ, NUMERIC, UUID, JSONB = (
    1114, 1184, 1186, 1266, 1700, 2950, 3802
)  # fmt: skip
