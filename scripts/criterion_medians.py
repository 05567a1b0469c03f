"""The medians of a criterion bench run, read from its printed output.

`medians(path)` returns {bench name: median throughput in M elements/s}. A bench's name is
either on its own line (followed by its `time:` and `thrpt:` lines) or at the start of its
`time:` line (short names); criterion's "change" lines (percentages) are skipped. Used by
scripts/bench-alternate.sh, scripts/bench-corun.sh and scripts/bench-cpu-table.sh.
"""

import re

SCALE = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}
NAME = r"[a-z_]+/\S+"


def medians(path):
    found, name = {}, None
    for line in open(path):
        s = line.strip()
        m = re.fullmatch(rf"({NAME})(?:\s+time:.*)?", s)
        if m:
            name = m.group(1)
        m = re.match(r"(?:\S+\s+)?thrpt:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", s)
        if m and name and "%" not in s:
            found[name] = float(m.group(1)) * SCALE[m.group(2)] / 1e6
            name = None
    return found
