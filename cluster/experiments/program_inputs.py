"""Synthetic inputs shaped like the ones the flowlog-bench programs read (csda, dyck, crdt,
galen, polonius, z3, doop): each generator takes ``size`` (the input grows about linearly with
it) and a NumPy generator, and returns the program's input relations by name.

A relation is an (n, k) integer array (number columns) or a tuple of k columns, where a column
of strings is a symbol column (doop). Rows may repeat: the writer drops duplicates.

Real programs are modular (functions, classes, ontology modules): facts relate things within
one module and cross modules rarely, which keeps what the analyses derive growing about
linearly with the input, as on the real inputs. Every generator here builds on that shape;
loops run over relations, registers or modules' offsets, never over tuples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Table = np.ndarray | tuple[np.ndarray, ...]
Relations = dict[str, Table]

FUNCTION = 48  # program points (or instructions) per function


def rows(*columns: npt.ArrayLike) -> np.ndarray:
    """Columns of numbers as one (n, k) int64 array."""
    return np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)


def chance(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """The indices among ``n`` each kept with probability ``p``."""
    return np.flatnonzero(rng.random(n) < p)


def cfg(rng: np.random.Generator, points: int, function: int, branch: float = 0.15, loop: float = 0.05) -> np.ndarray:
    """A control-flow graph over ``points`` program points cut into functions of ``function``
    consecutive points: each point flows to the next one of its function, some branch forward
    (2 to 6 points on, if-else) and some jump back (1 to 8 points, loops), never out of their
    function. (n, 2) edges."""
    i = np.arange(points, dtype=np.int64)
    start, end = i - i % function, np.minimum(i - i % function + function, points)
    step = i[i + 1 < end]
    fwd = chance(rng, points, branch)
    fwd_to = fwd + rng.integers(2, 7, len(fwd))
    back = chance(rng, points, loop)
    back_to = back - rng.integers(1, 9, len(back))
    src = np.concatenate([step, fwd[fwd_to < end[fwd]], back[back_to >= start[back]]])
    dst = np.concatenate([step + 1, fwd_to[fwd_to < end[fwd]], back_to[back_to >= start[back]]])
    return rows(src, dst)


def in_module(rng: np.random.Generator, of: np.ndarray, n: int, module: int, cross: float, skew: float = 0.0) -> np.ndarray:
    """For each id in ``of``, an id of its module (blocks of ``module`` consecutive ids among
    ``n``; Zipf-picked when ``skew`` > 1, else uniform) or, with probability ``cross``, any id."""
    m = len(of)
    offset = (rng.zipf(skew, m) - 1) % module if skew > 1 else rng.integers(0, module, m)
    local = np.minimum(of - of % module + offset, n - 1)
    return np.where(rng.random(m) < cross, rng.integers(0, n, m), local)


def csda(rng: np.random.Generator, size: int) -> Relations:
    """Null-flow over a program's dataflow edges: ``size`` nodes in functions with a CFG, and a
    call edge from about one function in three to the entry of one of the next eight (a call
    graph without cycles, so a null reaches a few functions); a null enters at one node in 20."""
    edges = cfg(rng, size, FUNCTION)
    functions = -(-size // FUNCTION)
    caller = chance(rng, functions, 0.3)
    callee = caller + rng.integers(1, 9, len(caller))
    keep = callee < functions
    site = caller[keep] * FUNCTION + rng.integers(0, FUNCTION, keep.sum())
    calls = rows(site, callee[keep] * FUNCTION)
    calls = calls[calls[:, 0] < size]
    null = chance(rng, size - 1, 0.05)
    return {"NullEdge": rows(null, null + 1), "Edge": np.concatenate([edges, calls])}


def dyck(rng: np.random.Generator, size: int) -> Relations:
    """A graph of ``size`` nodes labelled 0 and 1 (two kinds of parenthesis, the same label
    opening and closing): 1.5 arcs per node, inside modules of 16 nodes but for one in 200."""
    m = size * 3 // 2
    src = rng.integers(0, size, m)
    dst = in_module(rng, src, size, 16, 0.005)
    keep = src != dst
    return {"Arc": rows(src[keep], dst[keep], rng.integers(0, 2, keep.sum()))}


def crdt(rng: np.random.Generator, size: int) -> Relations:
    """A sequence CRDT's edit trace: ``size`` inserts, each with id (counter, node), counter the
    op's Lamport clock (1, 2, ...; unique), node one of 8 replicas (the program orders ids by
    counter*10 + node), and the id of the element it is inserted after: mostly the previous op
    (typing), one in 8 a random earlier element or the root (0, 0) (the cursor moved). A fifth of
    the elements are removed."""
    counter = np.arange(1, size + 1, dtype=np.int64)
    node = rng.integers(0, 8, size)
    jump = rng.random(size) < 0.125
    parent = np.where(jump, (rng.random(size) * (counter - 1)).astype(np.int64), counter - 1)
    parent_node = np.where(parent > 0, node[np.maximum(parent - 1, 0)], 0)
    removed = np.sort(rng.choice(size, size // 5, replace=False))
    return {"Insert_input": rows(counter, node, parent, parent_node), "Remove_input": rows(counter[removed], node[removed])}


def galen(rng: np.random.Generator, size: int) -> Relations:
    """An EL ontology (GALEN's normal form) over ``size`` concepts in modules of 64 and
    16 + size/500 roles: P told subsumptions (a parent among the earlier concepts of the module,
    a second one for one concept in 5), Q existentials x <= exists r.z (one per 2 concepts), U
    exists r.w <= z and C y & w <= z (rarer), S a role hierarchy, R role chains r o s <= t."""
    module, cross = 64, 0.002
    roles = 16 + size // 500
    c = np.arange(1, size, dtype=np.int64)
    first = c[c % module != 0]
    parent = first - 1 - (rng.random(len(first)) * (first % module)).astype(np.int64)
    second = chance(rng, len(first), 0.2)
    p = rows(np.concatenate([first, first[second]]), np.concatenate([parent, in_module(rng, first[second], size, module, cross)]))
    qx = rng.integers(0, size, size // 2)
    q = rows(qx, rng.zipf(1.6, len(qx)) % roles, in_module(rng, qx, size, module, cross))
    uw = rng.integers(0, size, size // 10)
    u = rows(uw, rng.zipf(1.6, len(uw)) % roles, in_module(rng, uw, size, module, cross))
    cy = rng.integers(0, size, size // 20)
    cw = in_module(rng, cy, size, module, 0.0)
    cz = in_module(rng, cy, size, module, 0.0)
    r_sub = np.arange(1, roles, dtype=np.int64)[rng.random(roles - 1) < 0.3]
    s = rows(r_sub, (rng.random(len(r_sub)) * r_sub).astype(np.int64))
    chains = rng.integers(0, roles, (max(1, roles // 8), 3))
    return {"P": p, "Q": q, "R": chains, "C": rows(cy, cw, cz), "U": u, "S": s}


def polonius(rng: np.random.Generator, size: int) -> Relations:
    """Rust borrow-check facts (Polonius) over a CFG of ``size`` points in functions, each
    function with its own 8 variables, 12 origins, two paths per variable (the variable and a
    field) and a loan issued at one point in 10; origins 0 and 1 are the universal
    (placeholder) ones, live everywhere, 0 known to outlive 1."""
    functions = -(-size // FUNCTION)
    nvar, norigin = 8, 12
    point = np.arange(size, dtype=np.int64)
    f = point // FUNCTION

    def local(ids: np.ndarray, per: int, offset: int = 0) -> np.ndarray:
        """A random one of the ``per`` things of the function of each point in ``ids``."""
        return offset + f[ids] * per + rng.integers(0, per, len(ids))

    def at(p: float, per: int, offset: int = 0) -> np.ndarray:
        """(thing, point) facts at a fraction ``p`` of the points."""
        ids = chance(rng, size, p)
        return rows(local(ids, per, offset), ids)

    subset_points = chance(rng, size, 0.5)
    o1 = local(subset_points, norigin, 2)
    o2 = local(subset_points, norigin, 2)
    o1 = np.where(rng.random(len(o1)) < 0.05, rng.integers(0, 2, len(o1)), o1)
    o2 = np.where(rng.random(len(o2)) < 0.05, rng.integers(0, 2, len(o2)), o2)
    issued = chance(rng, size, 0.1)
    loans = np.arange(len(issued), dtype=np.int64)
    function_end = np.minimum((f[issued] + 1) * FUNCTION, size)
    killed = chance(rng, len(loans), 0.3)
    kill_at = issued[killed] + (rng.random(len(killed)) * (function_end[killed] - issued[killed])).astype(np.int64)
    invalid = chance(rng, len(loans), 0.5)
    invalid_at = f[issued[invalid]] * FUNCTION + (
        rng.random(len(invalid)) * (function_end[invalid] - f[issued[invalid]] * FUNCTION)
    ).astype(np.int64)
    var = np.arange(functions * nvar, dtype=np.int64)
    var_origin = 2 + (var // nvar) * norigin + rng.integers(0, norigin, len(var))
    extra = chance(rng, len(var), 0.5)
    dropped = chance(rng, len(var), 0.5)
    # Path 2v is variable v itself, path 2v + 1 a field of it.
    return {
        "subset_base": rows(o1, o2, subset_points),
        "cfg_edge": cfg(rng, size, FUNCTION),
        "loan_issued_at": rows(loans, local(issued, norigin, 2), issued),
        "universal_region": rows(np.arange(2)),
        "var_used_at": at(0.6, nvar),
        "loan_killed_at": rows(killed, kill_at),
        "known_placeholder_subset": rows([0], [1]),
        "var_dropped_at": at(0.1, nvar),
        "drop_of_var_derefs_origin": rows(var[dropped], var_origin[dropped]),
        "var_defined_at": at(0.4, nvar),
        "child_path": rows(2 * var + 1, 2 * var),
        "path_moved_at_base": at(0.1, 2 * nvar),
        "path_assigned_at_base": at(0.3, 2 * nvar),
        "path_accessed_at_base": at(0.3, 2 * nvar),
        "path_is_var": rows(2 * var, var),
        "loan_invalidated_at": rows(invalid, invalid_at),
        "use_of_var_derefs_origin": rows(
            np.concatenate([var, var[extra]]),
            np.concatenate([var_origin, 2 + (var[extra] // nvar) * norigin + rng.integers(0, norigin, len(extra))]),
        ),
    }


def last_defs(start: np.ndarray, at: np.ndarray, var: np.ndarray, nvars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The definitions that reach each instruction inside its block: (instruction, defining
    instruction, variable) for every instruction i and variable v defined earlier in i's block
    (``start[i]``: the block's first instruction; ``at``, ``var``: the definitions). A running
    maximum of the defining positions, one pass per variable."""
    n = len(start)
    found = []
    for v in range(nvars):
        position = np.full(n, -1, dtype=np.int64)
        position[at[var == v]] = at[var == v]
        before = np.concatenate([[-1], np.maximum.accumulate(position)[:-1]])
        i = np.flatnonzero(before >= start)
        found.append(rows(i, before[i], np.full(len(i), v)))
    out = np.concatenate(found)
    return out[:, 0], out[:, 1], out[:, 2]


def defined_at_end(
    block_of: np.ndarray, last: np.ndarray, reaching: tuple[np.ndarray, np.ndarray, np.ndarray], at: np.ndarray, var: np.ndarray
) -> np.ndarray:
    """(block, variable, defining instruction) of each variable's last definition in each block:
    the one reaching the block's last instruction (``reaching``: ``last_defs``), unless that
    instruction defines the variable itself."""
    reach_at, reach_def, reach_var = reaching
    end = np.isin(reach_at, last)
    own = np.isin(at, last)
    key = block_of[at[own]] * (var.max(initial=0) + 1) + var[own]
    passed = ~np.isin(block_of[reach_at[end]] * (var.max(initial=0) + 1) + reach_var[end], key)
    return np.concatenate(
        [
            rows(block_of[reach_at[end]][passed], reach_var[end][passed], reach_def[end][passed]),
            rows(block_of[at[own]], var[own], at[own]),
        ]
    )


def z3(rng: np.random.Generator, size: int) -> Relations:
    """ddisasm's register and stack def-use inputs for ``size`` instructions (addresses 4096 +
    4i) in basic blocks of 1 to 7, functions of 12 blocks with a CFG between them; 16 registers
    (register 0 the return value, 5 the frame base, never redefined), Zipf-popular; stack
    variables (5, -8k) for 8 slots; calls at one block end in 5, each defining register 0; the
    last block of a function its return block; a jump table per 50 blocks."""
    ea = 4096 + 4 * np.arange(size, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(rng.integers(1, 8, size))])
    first = first[first < size]
    blocks = len(first)
    block_of = np.repeat(np.arange(blocks), np.diff(np.concatenate([first, [size]])))
    last = np.concatenate([first[1:] - 1, [size - 1]])
    start = first[block_of]
    fblocks = 12
    nfun = -(-blocks // fblocks)
    entry, ret = ea[first[::fblocks]], np.arange(fblocks - 1, blocks + fblocks - 1, fblocks).clip(max=blocks - 1)
    edges = cfg(rng, blocks, fblocks, branch=0.3, loop=0.1)

    def reg(n: int) -> np.ndarray:  # any register but the frame base
        r = (rng.zipf(1.4, n) - 1) % 15
        return r + (r >= 5)

    calls = last[chance(rng, blocks, 0.2)]
    callee = rng.integers(0, nfun, len(calls))
    define = rng.random(size) < 0.7
    define[calls] = True
    d_at = np.flatnonzero(define)
    d_var = reg(len(d_at))
    d_var[np.isin(d_at, calls)] = 0
    first_use, second_use = chance(rng, size, 0.8), chance(rng, size, 0.4)
    u_at = np.concatenate([first_use, second_use])
    u_index = np.repeat([0, 1], [len(first_use), len(second_use)])
    u_var = reg(len(u_at))
    # Stack variables: slot k is (5, -8(k+1)); a store defines one from the register it uses
    # first, a load (not a call) uses one into the register it defines.
    stores = rng.random(len(first_use)) < 0.12
    store, stored = first_use[stores], u_var[: len(first_use)][stores]
    loads = (rng.random(len(d_at)) < 0.12) & ~np.isin(d_at, calls) & ~np.isin(d_at, store)
    load, loaded = d_at[loads], d_var[loads]
    s_slot, l_slot = (rng.zipf(1.5, len(store)) - 1) % 8, (rng.zipf(1.5, len(load)) - 1) % 8

    before_at, before_def, before_var = last_defs(start, d_at, d_var, 16)
    live_def = defined_at_end(block_of, last, (before_at, before_def, before_var), d_at, d_var)
    s_at, s_def, s_var = last_defs(start, store, s_slot, 8)
    s_live = defined_at_end(block_of, last, (s_at, s_def, s_var), store, s_slot)
    l_reached = np.isin(load * 8 + l_slot, s_at * 8 + s_var)
    pos = -8 * (np.arange(8) + 1)

    def stack(slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (base register, position) columns of stack slots."""
        return np.full(len(slot), 5), pos[slot]

    block_ea = ea[first]
    b = block_ea[block_of]
    src, dst = edges[:, 0], edges[:, 1]
    fallthrough = dst == src + 1
    flow = chance(rng, len(edges), 0.05)
    tables = chance(rng, blocks, 0.02)
    entries = rng.integers(2, 9, len(tables))
    table = np.repeat(np.arange(len(tables)), entries)
    table_start = 0x4000000 + 64 * np.arange(len(tables))
    target = np.minimum(tables[table] - tables[table] % fblocks + rng.integers(0, fblocks, len(table)), blocks - 1)
    address = chance(rng, len(d_at), 0.02)
    used_for = chance(rng, len(u_at), 0.1)
    arithmetic = np.intersect1d(np.intersect1d(first_use, second_use), d_at)
    a_def = d_var[np.searchsorted(d_at, arithmetic)]
    a_src1 = u_var[np.searchsorted(first_use, arithmetic)]
    a_src2 = u_var[len(first_use) + np.searchsorted(second_use, arithmetic)]
    return {
        "Arch_memory_access": np.concatenate(
            [
                # (access type, EA, register, base register, index register 4, position): the
                # program's store and load constants.
                rows(
                    np.full(len(store), 2309374), ea[store], stored, np.full(len(store), 5), np.full(len(store), 4), pos[s_slot]
                ),
                rows(np.zeros(len(load)), ea[load], loaded, np.full(len(load), 5), np.full(len(load), 4), pos[l_slot]),
            ]
        ),
        "Arch_reg_reg_arithmetic_operation": rows(
            ea[arithmetic],
            a_def,
            a_src1,
            a_src2,
            2 ** rng.integers(0, 4, len(arithmetic)),
            8 * rng.integers(0, 4, len(arithmetic)),
        ),
        "Arch_return_reg": rows([0]),
        "Block_next": rows(block_ea[src], ea[last[src]], block_ea[dst]),
        "Block_last_instruction": rows(block_ea, ea[last]),
        "Code_in_block": rows(ea, b),
        "Direct_call": rows(ea[calls], entry[callee]),
        "May_fallthrough": np.concatenate(
            [
                rows(ea[:-1][block_of[1:] == block_of[:-1]], ea[1:][block_of[1:] == block_of[:-1]]),
                rows(ea[last[src[fallthrough]]], block_ea[dst[fallthrough]]),
            ]
        ),
        "Reg_def_use_block_last_def": rows(ea[before_at], ea[before_def], before_var),
        "Reg_def_use_defined_in_block": rows(b[d_at], d_var),
        "Reg_def_use_flow_def": rows(ea[last[src[flow]]], reg(len(flow)), block_ea[dst[flow]], rng.integers(0, 2, len(flow))),
        "Reg_def_use_live_var_def": rows(block_ea[live_def[:, 0]], live_def[:, 1], live_def[:, 1], ea[live_def[:, 2]]),
        "Reg_def_use_ref_in_block": rows(np.concatenate([b[d_at], b[u_at]]), np.concatenate([d_var, u_var])),
        "Reg_def_use_return_block_end": rows(entry, ea[last[ret]], block_ea[ret], ea[last[ret]]),
        "Reg_def_use_used": rows(ea[u_at], u_var, u_index),
        "Reg_def_use_used_in_block": rows(b[u_at], ea[u_at], u_var, u_index),
        "Reg_used_for": rows(ea[u_at[used_for]], u_var[used_for], np.where(rng.random(len(used_for)) < 0.5, 8859592, 1)),
        "Relative_jump_table_entry_candidate": rows(
            table_start[table] + 4 * (np.arange(len(table)) - np.repeat(np.cumsum(entries) - entries, entries)),
            table_start[table],
            np.full(len(table), 4),
            table_start[table],
            block_ea[target],
            np.full(len(table), 4),
            np.zeros(len(table)),
        ),
        "Stack_def_use_def": rows(ea[store], *stack(s_slot)),
        "Stack_def_use_defined_in_block": rows(b[store], *stack(s_slot)),
        "Stack_def_use_live_var_def": rows(block_ea[s_live[:, 0]], *stack(s_live[:, 1]), *stack(s_live[:, 1]), ea[s_live[:, 2]]),
        "Stack_def_use_ref_in_block": rows(np.concatenate([b[store], b[load]]), *stack(np.concatenate([s_slot, l_slot]))),
        "Stack_def_use_used_in_block": rows(b[load], ea[load], *stack(l_slot), np.zeros(len(load))),
        "Stack_def_use_used": rows(ea[load], *stack(l_slot), np.zeros(len(load))),
        "Stack_def_use_live_var_used": rows(
            b[load[~l_reached]],
            *stack(l_slot[~l_reached]),
            *stack(l_slot[~l_reached]),
            ea[load[~l_reached]],
            np.zeros((~l_reached).sum()),
            np.zeros((~l_reached).sum()),
        ),
        "Jump_table_start": rows(ea[last[tables]], np.full(len(tables), 4), table_start, table_start, np.full(len(tables), 4)),
        "def_used_for_address_0": rows(ea[d_at[address]], d_var[address], np.where(rng.random(len(address)) < 0.7, 8859592, 1)),
        "Stack_def_use_block_last_def": rows(ea[s_at], ea[s_def], *stack(s_var)),
    }


def names(prefix: str, ids: np.ndarray, suffix: str = "") -> np.ndarray:
    """``prefix<id>suffix`` for each id, as a column of symbols."""
    return np.char.add(np.char.add(prefix, np.asarray(ids).astype(str)), suffix)


def doop(rng: np.random.Generator, size: int) -> Relations:
    """DOOP's Java facts for ``size`` methods: 4 per class (slot 0 the constructor ``<init>``,
    the others named from 12 names, Zipf-popular, so that subclasses override), classes in
    packages of 32 whose superclass is an earlier class of the package (the first one's is
    java.lang.Object), one interface per 8 classes; each method has 6 variables (v0 ``this``,
    v1 its parameter) and about 12 instructions: allocations, local assignments and casts,
    virtual, static and constructor calls (to methods of its package but for one in 50),
    field, static field and array loads and stores, a return. Class 1 holds ``main``."""
    package, per_class, nvar = 32, 4, 12
    nclass = max(2, size // per_class)
    method = np.arange(nclass * per_class)
    owner = method // per_class
    c = np.arange(1, nclass)
    cls = np.concatenate([["java.lang.Object"], np.char.add(names("p", c // package, ".C"), c.astype(str))])
    head = c % package == 0
    parent = np.where(head, 0, c - 1 - (rng.random(len(c)) * (c % package)).astype(np.int64))
    parent = np.where(head | (parent < 0), 0, parent)
    ninterface = max(1, nclass // 8)
    interface = np.concatenate([["java.io.Serializable", "java.lang.Cloneable"], names("p", np.arange(ninterface), ".I")])
    implementing = chance(rng, nclass, 0.3)

    simple = (rng.zipf(1.5, len(method)) - 1) % 12
    # Wide enough for the names assigned below ("main", "<clinit>", "java.lang.String[]").
    name = np.where(method % per_class == 0, "<init>", names("m", simple)).astype("U16")
    returns = np.where((method % per_class != 0) & (simple % 2 == 1), "java.lang.Object", "void")
    params = np.where(simple % 3 == 0, "", "java.lang.Object").astype("U32")
    params[method % per_class == 0] = ""
    static = (rng.random(len(method)) < 0.15) & (method % per_class != 0)
    name[per_class + 1], returns[per_class + 1], params[per_class + 1], static[per_class + 1] = (
        "main",
        "void",
        "java.lang.String[]",
        True,
    )
    clinit = np.flatnonzero(rng.random(nclass) < 0.2) * per_class + 3
    name[clinit], returns[clinit], params[clinit], static[clinit] = "<clinit>", "void", "", True
    signature = np.char.add(
        np.char.add(np.char.add(np.char.add("<", cls[owner]), ": "), np.char.add(returns, " ")),
        np.char.add(np.char.add(name, "("), np.char.add(params, ")>")),
    )
    arity = (params != "").astype(np.int64)

    def var(m: np.ndarray, k: np.ndarray | int) -> np.ndarray:
        return np.char.add(
            np.char.add(np.char.add("m", m.astype(str)), "/v"), np.broadcast_to(np.asarray(k).astype(str), m.shape)
        )

    def some_vars(m: np.ndarray) -> np.ndarray:
        return var(m, rng.integers(1, nvar, len(m)))

    def callee(m: np.ndarray) -> np.ndarray:
        """A method of the caller's package, or of any, for each caller."""
        span = package * per_class
        local = np.minimum(m - m % span + rng.integers(0, span, len(m)), len(method) - 1)
        return np.where(rng.random(len(m)) < 0.02, rng.integers(0, len(method), len(m)), local)

    def local_class(m: np.ndarray) -> np.ndarray:
        return np.minimum(owner[m] - owner[m] % package + rng.integers(0, package, len(m)), nclass - 1)

    insn_count = [0]

    def instructions(per_method: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(instruction names, their methods, their indices) for about ``per_method`` per method."""
        m = np.sort(rng.integers(0, len(method), int(len(method) * per_method)))
        index = np.arange(len(m)) + insn_count[0]
        insn_count[0] += len(m)
        return names("i", index), m, index

    alloc, alloc_m, alloc_i = instructions(2.0)
    array_class = np.flatnonzero(rng.random(nclass) < 0.1)
    alloc_type = local_class(alloc_m)
    type_name = cls[alloc_type].astype("U64")
    arrays = chance(rng, len(alloc), 0.1)  # of an array type, of a class of any package
    if len(array_class):
        type_name[arrays] = np.char.add(cls[rng.choice(array_class, len(arrays))], "[]")
    heap = np.char.add(np.char.add("new ", type_name), np.char.add("/", alloc_i.astype(str)))
    assign, assign_m, assign_i = instructions(3.0)
    cast, cast_m, cast_i = instructions(0.5)
    virtual, virtual_m, virtual_i = instructions(1.5)
    virtual_to = callee(virtual_m)
    virtual_to = np.where(static[virtual_to], virtual_to - 1, virtual_to)
    stat, stat_m, stat_i = instructions(1.5)
    stat_to = callee(stat_m)
    special, special_m, special_i = instructions(0.5)
    special_to = local_class(special_m) * per_class
    calls = np.concatenate([virtual, stat, special])
    call_to = np.concatenate([virtual_to, stat_to, special_to])
    call_m = np.concatenate([virtual_m, stat_m, special_m])
    with_arg = arity[call_to] == 1
    with_result = returns[call_to] != "void"
    fields = np.char.add(np.char.add(np.char.add("<", cls), ": java.lang.Object f"), "0>")
    fields = np.concatenate([fields, np.char.add(np.char.add(np.char.add("<", cls), ": java.lang.Object f"), "1>")])
    field_class = np.concatenate([np.arange(nclass), np.arange(nclass)])
    store, store_m, store_i = instructions(0.5)
    load, load_m, load_i = instructions(1.0)
    sstore, sstore_m, sstore_i = instructions(0.2)
    sload, sload_m, sload_i = instructions(0.2)
    astore, astore_m, astore_i = instructions(0.2)
    aload, aload_m, aload_i = instructions(0.2)
    returning = np.flatnonzero(returns != "void")

    def field(m: np.ndarray) -> np.ndarray:
        return fields[local_class(m) + nclass * rng.integers(0, 2, len(m))]

    all_vars = var(np.repeat(method, nvar), np.tile(np.arange(nvar), len(method)))
    instance = np.flatnonzero(~static)
    modifier = np.concatenate(
        [np.full(len(method), "public"), np.full(static.sum(), "static"), np.full(len(clinit) // 20, "abstract")]
    )
    modified = np.concatenate([signature, signature[static], signature[clinit[: len(clinit) // 20] - 1]])
    strings = names("str", np.arange(max(1, len(method) // 20)))
    return {
        "DirectSuperclass": (cls[1:], cls[parent]),
        "DirectSuperinterface": (cls[implementing], interface[2 + implementing % ninterface]),
        "MainClass": (cls[1:2],),
        "FormalParam": (np.zeros(arity.sum(), dtype=np.int64), signature[arity == 1], var(method[arity == 1], 1)),
        "ComponentType": (np.char.add(cls[array_class], "[]"), cls[array_class]),
        "AssignReturnValue": (calls[with_result], some_vars(call_m[with_result])),
        "ActualParam": (np.zeros(with_arg.sum(), dtype=np.int64), calls[with_arg], some_vars(call_m[with_arg])),
        "Method_Modifier": (modifier, modified),
        "Var_Type": (all_vars, cls[local_class(np.repeat(method, nvar))]),
        "_ClassType": (cls,),
        "_ArrayType": (np.char.add(cls[array_class], "[]"),),
        "_InterfaceType": (interface,),
        "_Var_DeclaringMethod": (all_vars, np.repeat(signature, nvar)),
        "_ApplicationClass": (cls[1:],),
        "_ThisVar": (signature[instance], var(instance, 0)),
        "_NormalHeap": (heap, type_name),
        "_StringConstant": (strings,),
        "_AssignHeapAllocation": (alloc, alloc_i, heap, some_vars(alloc_m), signature[alloc_m], alloc_i % 100),
        "_AssignLocal": (assign, assign_i, some_vars(assign_m), some_vars(assign_m), signature[assign_m]),
        "_AssignCast": (cast, cast_i, some_vars(cast_m), some_vars(cast_m), cls[local_class(cast_m)], signature[cast_m]),
        "_Field": (fields, cls[field_class], np.repeat(["f0", "f1"], nclass), np.full(len(fields), "java.lang.Object")),
        "_StaticMethodInvocation": (stat, stat_i, signature[stat_to], signature[stat_m]),
        "_SpecialMethodInvocation": (special, special_i, signature[special_to], some_vars(special_m), signature[special_m]),
        "_VirtualMethodInvocation": (virtual, virtual_i, signature[virtual_to], some_vars(virtual_m), signature[virtual_m]),
        "_Method": (
            signature,
            name,
            params,
            cls[owner],
            returns,
            np.char.add(np.char.add(np.char.add("(", params), ")"), returns),
            arity,
        ),
        "_StoreInstanceField": (store, store_i, some_vars(store_m), some_vars(store_m), field(store_m), signature[store_m]),
        "_LoadInstanceField": (load, load_i, some_vars(load_m), some_vars(load_m), field(load_m), signature[load_m]),
        "_StoreStaticField": (sstore, sstore_i, some_vars(sstore_m), field(sstore_m), signature[sstore_m]),
        "_LoadStaticField": (sload, sload_i, some_vars(sload_m), field(sload_m), signature[sload_m]),
        "_StoreArrayIndex": (astore, astore_i, some_vars(astore_m), some_vars(astore_m), signature[astore_m]),
        "_LoadArrayIndex": (aload, aload_i, some_vars(aload_m), some_vars(aload_m), signature[aload_m]),
        "_Return": (names("r", returning), np.zeros(len(returning), dtype=np.int64), var(returning, 2), signature[returning]),
    }
