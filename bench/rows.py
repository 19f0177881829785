"""The rows of every benchmark table: the forwarders measured, in table order.

One table for bench/bench.py (what to run) and bench/report.py (how to label it).
"""
from collections import namedtuple

# label: the row's name in docs/benchmarks.md (Markdown); short: under a bar of a plot;
# tests: the only tests the row runs in (None: every test).
Row = namedtuple("Row", "name label short tests")

TABLE = (
    Row("direct", "direct (no forwarder)", "direct", None),
    Row("portfwd", "**portfwd**", "portfwd", None),
    # --dispatch accept differs from the default only in when a connection gets its processes
    # (at accept instead of at the first byte): that shows in the tests that open connections
    # under load, not in bulk throughput or held memory.
    Row("portfwd-accept", "portfwd `--dispatch accept`", "pf accept",
        frozenset({"connrate", "keepalive", "redis", "firstbyte"})),
    # Routing on the first bytes (when=): a TLS route by SNI and an HTTP route on one port, next
    # to the plain row, and sslh (fork) on the same routes. Only the tests whose clients speak TLS
    # or HTTP first: firstbyte sends a real ClientHello to these rows.
    Row("portfwd-tls", "portfwd `when=tls:NAME` + `when=http`", "pf routed",
        frozenset({"connrate", "firstbyte"})),
    Row("sslh", "sslh-fork (`--tls` + `--http`)", "sslh",
        frozenset({"connrate", "firstbyte"})),
    Row("cref", "C reference (seed)", "C ref", None),
    Row("socat", "socat (fork)", "socat", None),
    Row("rinetd", "rinetd", "rinetd", None),
    Row("haproxy", "haproxy (mode tcp)", "haproxy", None),
    Row("nginx", "nginx stream", "nginx", None),
)

ROWS = [r.name for r in TABLE]
LABELS = {r.name: r.label for r in TABLE}
SHORT = {r.name: r.short for r in TABLE}
ROW_TESTS = {r.name: r.tests for r in TABLE if r.tests is not None}
