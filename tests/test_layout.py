"""The tree is the architecture: no import cycles anywhere in engine/ or viewer/, lazy imports
included (import-linter's contracts in pyproject.toml keep the layers; this keeps the loops out)."""

from __future__ import annotations

import grimp


def import_cycles(graph, modules: set[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over every import grimp sees,
    including those inside functions. A package's __init__ importing its own children, and a
    child importing its package, would be a loop too: the layout avoids both."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in modules:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles():
    graph = grimp.build_graph("engine", "viewer", cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in ("engine", "viewer")}
    assert import_cycles(graph, modules) == []


def test_cycle_finder_finds_a_cycle():
    # The finder itself must be able to fail: a two-module loop and a three-module loop.
    class Graph:
        edges = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges.get(module, set())

    assert import_cycles(Graph(), set(Graph.edges)) == [["a", "b"], ["c", "d", "e"]]
