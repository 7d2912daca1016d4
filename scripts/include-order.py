#!/usr/bin/env python3
"""Checks that src/ modules include each other in one direction only.

A module is a .c/.h pair; module A depends on B when A's .c or .h
includes "B.h".  Prints the order (each module after everything it
uses) and exits 1 with the cycle when there is one."""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
deps = {}
for name in sorted(os.listdir(src)):
    mod, ext = os.path.splitext(name)
    if ext not in (".c", ".h"):
        continue
    with open(os.path.join(src, name)) as f:
        for inc in re.findall(r'^#include "([^"]+)\.h"', f.read(), re.M):
            if inc != mod:
                deps.setdefault(mod, set()).add(inc)
    deps.setdefault(mod, set())

order, state = [], {}


def visit(m, path):
    if state.get(m) == "done":
        return
    if state.get(m) == "open":
        cycle = path[path.index(m):] + [m]
        sys.exit("include cycle: " + " -> ".join(cycle))
    state[m] = "open"
    for d in sorted(deps.get(m, ())):
        visit(d, path + [m])
    state[m] = "done"
    order.append(m)


for m in sorted(deps):
    visit(m, [])
print("include order: " + " ".join(order))
