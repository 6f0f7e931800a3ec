#!/usr/bin/env python3
"""Fails when the modules of src/ import each other in a cycle.

A module is a file under src/ (a backend folder or http/ counts as one); an import is any
`crate::<module>` path outside its #[cfg(test)] part. Cycles are what make a change in one
place ripple through the rest, so the test command keeps the graph acyclic.
"""
import os
import re
import sys

src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
graph = {}
for folder, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(folder, f)
        parts = os.path.relpath(path, src)[:-3].split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts[0] == "backend" and len(parts) > 1:
            name = "backend/" + parts[1]
        else:
            name = parts[0]
        text = open(path, encoding="utf-8").read()
        cut = text.find("#[cfg(test)]")
        if cut >= 0:
            text = text[:cut]
        refs = set()
        for m in re.finditer(r"crate::(\w+)(?:::(\w+))?", text):
            a, b = m.group(1), m.group(2)
            refs.add("backend/" + b if a == "backend" and b in ("docker", "haproxy", "ec2") else a)
        graph.setdefault(name, set()).update(r for r in refs if r != name)


def reachable(start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


cyclic = sorted(m for m in graph if m in reachable(m))
if cyclic:
    for m in cyclic:
        print(f"import cycle through {m}: imports {sorted(graph[m])}", file=sys.stderr)
    sys.exit(1)
print(f"imports: {len(graph)} modules, no cycle")
