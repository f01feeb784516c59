"""Tests of the program IR (lab/kinds/program/ir.py, text.py, mutate.py): the text form and its
errors, liveness across steps, dead code, constant folding, the symbolic hash, validity, arrays,
and mutations."""

from __future__ import annotations

import warnings
from importlib import resources

import numpy as np
import pytest

from lab.kinds.program import ir as P
from lab.kinds.program import mutate as M
from lab.kinds.program.ops import NOP, OP_INDEX, OPS
from lab.kinds.program.programs import (
    MAX_LEN,
    ProgramError,
    from_source,
    genome_of,
    load_seed,
    parse,
    program_of,
    read_program,
    seed_names,
    source_of,
    to_source,
)

HEAD = "def f(g, w, lr, t, m, v):\n"


def prog(body: str, head: str = HEAD):
    """A program from its indented body lines (one statement a line)."""
    return parse(head + "".join(f"    {ln.strip()}\n" for ln in body.strip().splitlines()))


def sample_programs(n: int = 50) -> list:
    """Random and mutated programs, fixed by the seed; every third with random outputs (inputs
    among them, or one register twice)."""
    rng = np.random.default_rng(2024)
    out = []
    for i in range(n):
        p = M.random_program(rng, int(rng.integers(1, 12))) if i % 2 else load_seed(
            seed_names()[i % len(seed_names())])
        if i % 3 == 0:
            p = P.Program(p.stmts, tuple(int(r) for r in rng.integers(P.N_IN + len(p), size=3)),
                          p.name)
        for _ in range(i % 3):
            p = M.mutate(p, rng)
        out.append(p)
    return out


SAMPLE = sample_programs()


# ---- text form ---------------------------------------------------------------------------

def test_there_are_the_documented_seeds():
    assert set(seed_names()) == {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop",
                                 "lion", "sign_sgd", "powersign", "addsign"}


@pytest.mark.parametrize("name", seed_names())
def test_seed_file_round_trips(name):
    p = load_seed(name)
    assert p.name == name and P.is_valid(p)
    assert parse(to_source(p)) == p
    text = (resources.files("lab.kinds.program") / "seeds" / f"{name}.prog").read_text()
    body = "".join(ln + "\n" for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert to_source(p) == body


def test_random_and_mutated_programs_round_trip():
    assert len({P.symbolic_hash(p) for p in SAMPLE}) > 40
    for p in SAMPLE:
        assert parse(to_source(p)) == p, to_source(p)


def test_names_comments_and_blank_lines_do_not_matter():
    a = prog("m = interp(g, m, 0.9)\nu = sign(m)\nreturn u, m, v")
    b = parse("# a comment\n\ndef f(grad, p, eta, step, mom, sec):  # inputs\n"
              "    mom = interp(grad, mom, 0.9)\n\n    out = sign(mom)  # why\n"
              "    return out, mom, sec\n")
    assert a == b


def test_names_starting_like_numbers_are_names():
    p = parse("def nanny(g, w, lr, t, m, v):\n    information = sign(g)\n"
              "    return information, m, v\n")
    assert p.name == "nanny" and p.stmts == (P.Stmt(OP_INDEX["sign"], P.G),)


E = "def f(g, w, lr, t, m, v):\n"


@pytest.mark.parametrize("text, line, column, says", [
    ("# c\n\nhello world\n", 3, 1, "expected 'def NAME"),
    ("", 1, 1, "empty program"),
    (E + "    u = sqaure(g)\n    return u, m, v\n", 2, 9,
     "unknown op 'sqaure'; did you mean square"),
    (E + "    u = square(q)\n    return u, m, v\n", 2, 16, "'q' is not defined"),
    (E + "    u = square(g)\n    return uu, m, v\n", 3, 12, "'uu' is not defined; did you mean u"),
    (E + "    u = add(g)\n    return u, m, v\n", 2, 14, r"expected ',' \(add\(x, y\)\)"),
    (E + "    u = square(g, m)\n    return u, m, v\n", 2, 17, "square takes 1 argument"),
    (E + "    u = scale_k(g)\n    return u, m, v\n", 2, 18, r"scale_k\(x, k\)"),
    (E + "    u = square(g)\n", 3, 1, "missing 'return update, m, v'"),
    (E + "    u = square(g)\n    return u, m, v\n    x = sign(g)\n", 4, 1,
     "statement after 'return'"),
    (E + "    u = scale_k(g, 1e39)\n    return u, m, v\n", 2, 20, "not a finite float32"),
    (E + "    u = scale_k(g, inf)\n    return u, m, v\n", 2, 20, "not a finite float32"),
    (E + "    u = scale_k(g, nan)\n    return u, m, v\n", 2, 20, "not a finite float32"),
    ("def f(g, w, lr, t, g, v):\n    u = sign(g)\n    return u, g, v\n", 1, 20,
     "input 'g' is named twice"),
    ("def f(g, w, lr, t, m):\n    return g, m, m\n", 1, 6, "5 inputs fit no program signature"),
    (E + "    u = square(g) $\n    return u, m, v\n", 2, 19, "unexpected '\\$'"),
    (E + "    square = sign(g)\n    return square, m, v\n", 2, 5, "cannot be assigned"),
    (E + "    u = sign(g) sign\n    return u, m, v\n", 2, 17, "after the end of the statement"),
    (E + "    return g, m\n", 2, 16, r"return update, m, v"),
    ("def d(r, A, progress):\n    x = mean(r)\n    return x\n", 2, 9,
     "op 'mean' is not available to drift programs"),
    ("def d(r, A, progress):\n    x = abs(r)\n    return x, x\n", 3, 13,
     "after the end of the statement"),
    ("def s(t, T):\n    x = div(t, T)\n", 3, 1, "missing 'return multiplier'"),
], ids=["garbage", "empty", "unknown_op", "undefined", "return_undefined", "too_few_args",
        "too_many_args", "missing_k", "missing_return", "after_return", "overflowing_k", "inf_k",
        "nan_k", "duplicate_input", "five_inputs", "bad_character", "assign_to_op",
        "trailing_token", "short_return", "op_not_in_signature", "drift_returns_one",
        "schedule_return"])
def test_malformed_text_names_line_and_column(text, line, column, says):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way (1e39 -> inf)
        with pytest.raises(ProgramError, match=says) as err:
            parse(text, "bad.prog")
    assert str(err.value).startswith(f"bad.prog: line {line}, column {column}: "), str(err.value)


def test_read_program_and_load_seed_name_what_is_wrong(tmp_path):
    good = tmp_path / "good.prog"
    good.write_text(to_source(load_seed("lion")))
    assert read_program(good) == load_seed("lion")
    with pytest.raises(ProgramError, match="missing.prog: no such program file"):
        read_program(tmp_path / "missing.prog")
    bad = tmp_path / "bad.prog"
    bad.write_text(HEAD + "    u = sign(x)\n    return u, m, v\n")
    with pytest.raises(ProgramError, match=r"bad\.prog: line 2, column 14"):
        read_program(bad)
    binary = tmp_path / "binary.prog"
    binary.write_bytes(b"\xff\xfe\x00def")
    with pytest.raises(ProgramError, match="cannot read"):
        read_program(binary)
    with pytest.raises(ProgramError, match="unknown seed program 'adma'.*adam"):
        load_seed("adma")


# ---- liveness and dead code --------------------------------------------------------------

def test_slot_written_but_never_read_is_dead():
    p = prog("m = interp(g, m, 0.9)\nx1 = square(g)\nv = interp(x1, v, 0.999)\nu = sign(m)\n"
             "return u, m, v")
    assert P.live_slots(p) == (True, False)
    assert P.live_statements(p) == [0, 3]
    q = P.remove_dead(p)
    assert q == prog("m = interp(g, m, 0.9)\nu = sign(m)\nreturn u, m, v")
    assert q.out[2] == P.S1  # the dead slot is written back unchanged (zero forever)


def test_state_write_overwritten_before_read_is_dead():
    """The Lion paper's case: a state write that a later write replaces before any read."""
    p = prog("x0 = interp(g, m, 0.9)\nu = sign(x0)\nm = exp(u)\nm = interp(g, x0, 0.99)\n"
             "return u, m, v")
    assert P.live_slots(p) == (True, False)
    assert P.live_statements(p) == [0, 1, 3]
    assert "exp" not in to_source(P.remove_dead(p))
    assert P.symbolic_hash(p) == P.symbolic_hash(P.remove_dead(p))


def test_liveness_across_steps():
    # the update reads m; m's new value reads v; v's new value reads g: all live
    p = prog("u = sign(m)\nm = add(v, m)\nv = neg(g)\nreturn u, m, v")
    assert P.live_slots(p) == (True, True)
    assert P.depends_on_required(p) and P.remove_dead(p) == p
    # the same without the read of v: v is dead and so is its statement
    q = prog("u = sign(m)\nm = scale_k(m, 0.5)\nx = add_k(g, 1.0)\nm = add(m, x)\n"
             "v = neg(g)\nreturn u, m, v")
    assert P.live_slots(q) == (True, False)
    assert len(P.remove_dead(q)) == 4


def test_dead_code_removal_keeps_what_the_outputs_need():
    p = prog("a = exp(w)\nb = sign(g)\nc = tanh(a)\nd = mul(b, lr)\nreturn d, m, v")
    q = P.remove_dead(p)
    assert q == prog("b = sign(g)\nd = mul(b, lr)\nreturn d, m, v")
    assert P.remove_dead(q) == q


# ---- constant folding ----------------------------------------------------------------------

def test_mul_and_add_by_a_constant_become_scale_k_and_add_k():
    for body, want in [
        ("c = const_k(2.0)\ny = mul(g, c)", "y = scale_k(g, 2.0)"),
        ("c = const_k(2.0)\ny = mul(c, g)", "y = scale_k(g, 2.0)"),
        ("c = const_k(-3.0)\ny = add(c, g)", "y = add_k(g, -3.0)"),
    ]:
        assert P.simplify(prog(body + "\nreturn y, m, v")) == prog(want + "\nreturn y, m, v")


def test_all_constant_chains_fold():
    p = prog("c = const_k(2.0)\nd = square(c)\ne = add_k(d, 1.0)\nf = recip(e)\n"
             "h = sub(f, c)\ny = mul(g, h)\nreturn y, m, v")
    assert P.simplify(p) == prog("y = scale_k(g, -1.8)\nreturn y, m, v")


def test_step_dependent_and_reduced_constants_are_not_folded():
    p = prog("c = pow_t(0.9)\nd = const_k(3.0)\ne = mean(d)\nx = mul(c, e)\ny = mul(g, x)\n"
             "return y, m, v")
    q = P.simplify(p)
    assert [OPS[s.op].name for s in q.stmts] == ["pow_t", "const_k", "mean", "mul", "mul"]


# ---- symbolic hash -------------------------------------------------------------------------

H = P.symbolic_hash


def test_symbolic_hash_ignores_names_order_dead_code_and_commutative_order():
    base = prog("m = interp(g, m, 0.9)\na = square(g)\nb = sign(m)\nc = add(a, b)\n"
                "d = mul(c, lr)\nreturn d, m, v")
    same = [
        parse("def other(grad, p, eta, step, mom, sec):\n    mom = interp(grad, mom, 0.9)\n"
              "    q = square(grad)\n    r = sign(mom)\n    s = add(q, r)\n"
              "    y = mul(s, eta)\n    return y, mom, sec\n"),
        prog("b0 = square(g)\nm = interp(g, m, 0.9)\nb = sign(m)\nc = add(b, b0)\n"
             "d = mul(lr, c)\nreturn d, m, v"),  # independent statements swapped, args too
        prog("m = interp(g, m, 0.9)\nj = exp(w)\na = square(g)\nb = sign(m)\nc = add(a, b)\n"
             "k = add(j, c)\nd = mul(c, lr)\nv = tanh(j)\nreturn d, m, v"),  # dead code
        prog("m = interp(g, m, 0.9)\na = square(g)\nb = sign(m)\nb2 = sign(m)\nc = add(a, b2)\n"
             "d = mul(c, lr)\nreturn d, m, v"),  # a duplicate statement
    ]
    for q in same:
        assert H(q) == H(base), to_source(q)
    for op in ("add", "mul", "max", "min", "dot", "cosine"):
        a = prog(f"x = {op}(g, m)\nm = neg(g)\nreturn x, m, v")
        b = prog(f"x = {op}(m, g)\nm = neg(g)\nreturn x, m, v")
        assert H(a) == H(b), op


def test_symbolic_hash_tells_apart_what_differs():
    def h(line):
        return H(prog(f"{line}\nm = interp(g, m, 0.9)\nreturn x, m, v"))
    hashes = [h("x = sub(g, m)"), h("x = sub(m, g)"), h("x = div(g, m)"), h("x = div(m, g)"),
              h("x = interp(g, m, 0.5)"), h("x = interp(m, g, 0.5)"), h("x = scale_k(g, 0.5)"),
              h("x = scale_k(g, 0.25)"), h("x = scale_k(g, 0.50000006)"), h("x = add(g, m)")]
    assert len(set(hashes)) == len(hashes)
    # the slots' roles count: a swap of the outputs is another program
    a = prog("x = add(m, v)\nm = neg(g)\nv = sign(g)\nreturn x, m, v")
    assert H(a) != H(P.Program(a.stmts, (a.out[0], a.out[2], a.out[1])))


def test_symbolic_hash_sees_through_constant_folding():
    a = prog("c = const_k(2.0)\ny = mul(g, c)\nreturn y, m, v")
    assert H(a) == H(prog("y = scale_k(g, 2.0)\nreturn y, m, v"))


# ---- validity --------------------------------------------------------------------------------

def test_update_must_depend_on_g():
    no_g = prog("u = sign(w)\nm = interp(g, m, 0.9)\nreturn u, m, v")
    assert not P.is_valid(no_g)
    with pytest.raises(ProgramError, match="does not depend on the gradient g"):
        P.validate(no_g)
    via_state = prog("u = sign(m)\nm = interp(g, m, 0.9)\nreturn u, m, v")
    assert P.is_valid(via_state)
    two_steps = prog("u = sign(m)\nm = add(v, m)\nv = neg(g)\nreturn u, m, v")
    assert P.is_valid(two_steps)
    state_without_g = prog("u = sign(m)\nm = interp(w, m, 0.9)\nv = neg(g)\nreturn u, m, v")
    assert not P.is_valid(state_without_g)


def test_check_refuses_undefined_registers_and_ops():
    s = P.Stmt(OP_INDEX["sign"], P.G)
    for bad in [P.Program((P.Stmt(OP_INDEX["sign"], 7),), (6, 4, 5)),
                P.Program((s,), (7, 4, 5)),
                P.Program((P.Stmt(len(OPS), 0, 0),), (6, 4, 5))]:
        assert not P.is_valid(bad)
        with pytest.raises(ProgramError):
            P.check(bad)


# ---- learning-rate multiplier and arrays -----------------------------------------------------

def test_bake_lr():
    p = load_seed("adam")
    assert P.bake_lr(p, 1.0) is p
    q = P.bake_lr(p, 2.0)
    assert len(q) == len(p) + 1 and q.stmts[0] == P.Stmt(OP_INDEX["scale_k"], P.LR, 0, 2.0)
    assert not any(P.LR in P.reads(s) for s in q.stmts[1:])
    assert "x0 = scale_k(lr, 2.0)" in to_source(q) and P.is_valid(q)
    assert program_of(genome_of(p, lr=2.0), "adam") == q
    assert "scale_k(lr, 2.0)" in source_of(genome_of(p, lr=2.0))
    assert program_of(genome_of(p), "adam") == p


@pytest.mark.parametrize("p", [load_seed("adam"), load_seed("sgd"), SAMPLE[3], SAMPLE[8]],
                         ids=["adam", "sgd", "sample3", "sample8"])
def test_arrays_round_trip_with_nop_padding(p):
    g = p.to_arrays(20)
    assert {k: (v.dtype, v.shape) for k, v in g.items()} == {
        "op": (np.int32, (20,)), "a": (np.int32, (20,)), "b": (np.int32, (20,)),
        "k": (np.float32, (20,)), "out": (np.int32, (3,)), "n": (np.int32, ())}
    n = len(p)
    assert int(g["n"]) == n and P.nop_padding_ok(g)
    assert np.all(g["op"][n:] == NOP) and not np.any(g["a"][n:]) and not np.any(g["k"][n:])
    assert P.Program.from_arrays(g, p.name) == p
    genome = genome_of(p)
    assert genome["op"].shape == (MAX_LEN,) and float(genome["lr"]) == 1.0
    assert from_source(to_source(p), 2)["op"].shape == (max(2, n),)


def test_arrays_refuse_what_is_no_program():
    p = load_seed("adam")
    with pytest.raises(ProgramError, match="more than the genome length 5"):
        p.to_arrays(5)
    g = p.to_arrays()
    g["a"][1] = 8  # square reads the register statement 2 defines
    with pytest.raises(ProgramError, match="statement 1"):
        P.Program.from_arrays(g)
    g = p.to_arrays()
    g["op"][0] = 99
    with pytest.raises(ProgramError, match="unknown op code 99"):
        P.Program.from_arrays(g)
    g = p.to_arrays()
    g["op"][len(p)] = OP_INDEX["sign"]
    assert not P.nop_padding_ok(g)


# ---- mutations -------------------------------------------------------------------------------

def test_children_are_valid_short_enough_and_new():
    rng = np.random.default_rng(7)
    for name in seed_names():
        p = load_seed(name)
        for _ in range(5):
            child = M.mutate(p, rng, max_len=20)
            assert P.is_valid(child) and len(child) <= 20
            assert H(child) != H(p)
            p = child


def test_mutation_is_deterministic_given_the_seed():
    def chain(seed):
        rng = np.random.default_rng(seed)
        p, out = load_seed("adam"), []
        for _ in range(10):
            p = M.mutate(p, rng)
            out.append(p)
        return out
    assert chain(3) == chain(3)
    assert chain(3) != chain(4)
    assert M.random_program(np.random.default_rng(5), 6) == \
        M.random_program(np.random.default_rng(5), 6)


def _changed(p, q) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(p.stmts, q.stmts, strict=True)) if a != b]


@pytest.mark.parametrize("kind", M.KINDS)
def test_each_mutation_kind(kind):
    assert set(M.MUTATIONS) == set(M.KINDS)
    rng = np.random.default_rng(11)
    p = load_seed("adamw")
    seen_effect = False
    for _ in range(30):
        q = M.MUTATIONS[kind](p, rng)
        P.check(q)
        if kind == "insert":
            assert len(q) == len(p) + 1
        elif kind == "delete":
            assert len(q) == len(p) - 1
        else:
            assert len(q) == len(p)
            diff = _changed(p, q)
            assert len(diff) <= 1
            for i in diff:
                a, b = p.stmts[i], q.stmts[i]
                if kind == "change_arg":
                    assert (a.op, a.k) == (b.op, b.k) and q.out == p.out
                if kind == "scale_k":
                    assert (a.op, a.a, a.b) == (b.op, b.a, b.b) and a.k * b.k > 0
            if kind != "change_arg":
                assert q.out == p.out
        seen_effect |= H(q) != H(p)
    assert seen_effect
    # through mutate, with only this kind allowed: valid, and a new symbolic hash
    only = {k: float(k == kind) for k in M.KINDS}
    child = M.mutate(p, rng, weights=only)
    assert P.is_valid(child) and H(child) != H(p)
    assert len(child) - len(p) == {"insert": 1, "delete": -1}.get(kind, 0)


@pytest.mark.parametrize("op", ["scale_k", "add_k", "interp", "pow_t"])
def test_constants_live_on_a_lattice_where_moves_reverse_exactly(op):
    """A constant moved j points and back is bit-equal to its lattice point; a decay stays in
    (0, 1); signs and the bound hold; fresh constants are lattice points."""
    code, rng = OP_INDEX[op], np.random.default_rng(2)
    decay = code in M.DECAYS
    for k in [0.9, 0.999, 0.5, 0.02, *rng.uniform(0.05, 0.99, 20)] + (
            [] if decay else [1.0, 3.7, 1e-8, -0.3, -1e-8, *rng.standard_normal(20)]):
        point = M.lattice(k, code)
        assert M.lattice(point, code) == point  # a fixed point
        assert np.float32(point) != 0 and np.sign(point) == np.sign(k)
        if decay and 0 < k < 1:
            assert 0 < point < 1 and abs(point - k) <= 0.1 * min(k, 1 - k)
        else:
            assert abs(np.log2(abs(point)) - np.log2(abs(k))) <= 0.5 / M.STEPS + 1e-9
        for j in (1, 2, 5, -1, -3):
            moved = M.lattice(k, code, j)
            assert moved != point and M.lattice(moved, code, -j) == point
            assert (moved > point) == (j > 0) or (k < 0)
    assert abs(M.lattice(1e30, code)) <= M.K_MAX and M.lattice(0.0, code) == 0.0
    if decay:  # the ends of the decays' lattice: moves past them stop there
        assert 0 < M.lattice(1e-12, code) == M.lattice(0.3, code, -10 ** 6) < 1e-6
        assert 1 - 1e-6 < M.lattice(1 - 1e-12, code) == M.lattice(0.7, code, 10 ** 6) < 1
    fresh = [M.random_k(rng, code) for _ in range(50)]
    assert all(M.lattice(k, code) == k for k in fresh)


def test_scale_k_moves_along_the_lattice_and_siblings_meet():
    """Children of one parent that scale the same constant land on shared lattice points, so
    the symbolic cache sees repeats (with 2 ** N(0, 1) factors it never did)."""
    rng = np.random.default_rng(4)
    p = load_seed("adamw")
    only = {k: float(k == "scale_k") for k in M.KINDS}
    kids = [M.mutate(p, rng, weights=only) for _ in range(200)]
    for q in kids:
        (i,) = _changed(p, q)
        assert M.lattice(q.stmts[i].k, q.stmts[i].op) == q.stmts[i].k
    assert len({H(q) for q in kids}) < 0.6 * len(kids)  # ~100 distinct of 200


def test_insert_at_full_length_deletes_and_no_tries_keep_the_parent():
    p = load_seed("adam")
    only_insert = {k: float(k == "insert") for k in M.KINDS}
    child = M.mutate(p, np.random.default_rng(0), max_len=len(p), weights=only_insert)
    assert len(child) == len(p) - 1
    assert M.mutate(p, np.random.default_rng(0), tries=0) is p


def test_random_programs_are_valid_with_the_asked_length():
    rng = np.random.default_rng(1)
    for length in (0, 1, 5, 12):
        p = M.random_program(rng, length)
        assert len(p) == length and P.is_valid(p)
