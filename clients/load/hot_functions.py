"""Reads a callgrind profile of the server and prints the functions of the binary that ran,
by instructions spent in each (hottest first), one symbol name a line: the linker's symbol
ordering file, followed by the names of PREVIOUS (the list in use) that this run did not see but
the binary still has: which rarer paths a run takes depends on timing, and names the binary no
longer has are dropped. Usage: hot_functions.py CALLGRIND_OUT BINARY [PREVIOUS]
(see hot-functions.sh)."""
import re
import subprocess
import sys

path, binary = sys.argv[1], sys.argv[2]
names = {}
cost = {}
cur = None
skip_next = False
defn = re.compile(r'^(c?fn)=\((\d+)\)(?: (.*))?$')
for line in open(path, errors='replace'):
    line = line.rstrip('\n')
    m = defn.match(line)
    if m:
        kind, ident, name = m.groups()
        if name is not None:
            names[ident] = name
        if kind == 'fn':
            cur = ident
        continue
    if line.startswith('calls='):
        skip_next = True
        continue
    if line[:1].isdigit() or line[:1] in '+-*':
        if skip_next:
            skip_next = False
            continue
        parts = line.split()
        if cur is not None and len(parts) >= 2:
            cost[cur] = cost.get(cur, 0) + int(parts[1])
syms = set()
out = subprocess.run(['nm', '--defined-only', binary], capture_output=True, text=True).stdout
for l in out.splitlines():
    p = l.split()
    if len(p) == 3 and p[1] in 'tTwW':
        syms.add(p[2])
ranked = sorted(((c, names[i]) for i, c in cost.items() if names.get(i) in syms), reverse=True)
seen = set()
for c, n in ranked:
    if n not in seen:
        seen.add(n)
        print(n)
if len(sys.argv) > 3:
    for n in open(sys.argv[3]).read().split():
        if n in syms and n not in seen:
            seen.add(n)
            print(n)
