"""Position-forest labels and teacher-forcing targets (posformer.md §4, §5; acceptance tests P1–P8)."""

from __future__ import annotations

import random

import pytest
import torch

from recognizers.posformer.tree import (
    EOS_CLASS,
    IGNORE_INDEX,
    L_CLASS,
    M_CLASS,
    PAD_CLASS,
    R_CLASS,
    MalformedLatexError,
    bidirectional_targets,
    label_positions,
)

REL = {"M": M_CLASS, "L": L_CLASS, "R": R_CLASS}
PAD, SOS, EOS = 0, 1, 2


def _t(latex: str) -> list[str]:
    """Tokens of a space-separated caption."""
    return latex.split()


def _ids(tokens, table):
    """Map token strings to ids with a small local table (ids from 3, first-seen order)."""
    return [table.setdefault(t, 3 + len(table)) for t in tokens]


def _check(tokens: str, paths: list[str], identifiers: list[str], level_rel: list[str]):
    """Compare labels with a spec table; paths are written 'L·M', level/rel as '1/L'."""
    labels = label_positions(_t(tokens))
    assert [".".join(p) for p in labels.paths] == [p.replace("·", ".") for p in paths]
    assert list(labels.identifiers) == identifiers
    expected = [(int(x.split("/")[0]), REL[x.split("/")[1]]) for x in level_rel]
    assert list(zip(labels.levels, labels.relations, strict=True)) == expected
    return labels


def test_example_1_superscript():
    """P1, Example 1: x ^ { 2 } + y."""
    labels = _check("x ^ { 2 } + y", ["M", "M", "M", "L·M", "M", "M", "M"],
                    ["M", "M", "M", "ML", "M", "M", "M"], ["0/M", "0/M", "0/M", "1/L", "0/M", "0/M", "0/M"])
    assert labels.vectors == ((3, 0, 0, 0, 0),) * 3 + ((4, 3, 0, 0, 0),) + ((3, 0, 0, 0, 0),) * 3


def test_example_2_fraction():
    """P1, Example 2: \\frac { a } { b + c }."""
    _check(r"\frac { a } { b + c }", ["M", "M", "L·M", "M", "M", "R·M", "R·M", "R·M", "M"],
           ["M", "M", "ML", "M", "M", "MR", "MR", "MR", "M"],
           ["0/M", "0/M", "1/L", "0/M", "0/M", "1/R", "1/R", "1/R", "0/M"])


def test_example_3_sqrt_with_subscript():
    """P1, Example 3: \\sqrt { x _ { i } }; the radicand is R and the inner _ { } sit at level 1."""
    _check(r"\sqrt { x _ { i } }", ["M", "M", "R·M", "R·M", "R·M", "R·R·M", "R·M", "M"],
           ["M", "M", "MR", "MR", "MR", "MRR", "MR", "M"],
           ["0/M", "0/M", "1/R", "1/R", "1/R", "2/R", "1/R", "0/M"])


def test_poster_example_identifiers():
    """P2: the poster example of §4.1."""
    tokens = _t(r"A y ^ { 3 } _ { 1 } + \frac { y ^ { \beta _ { 1 } } _ { 2 } B } { C }")
    labels = label_positions(tokens)
    ident = dict(enumerate(labels.identifiers))
    pick = {i: t for i, t in enumerate(tokens)}
    symbols = {i: ident[i] for i in pick if pick[i] not in {"^", "_", "{", "}"}}
    assert list(symbols.values()) == ["M", "M", "ML", "MR", "M", "M", "ML", "MLL", "MLLR", "MLR", "ML",
                                      "MR"]
    assert [pick[i] for i in symbols] == ["A", "y", "3", "1", "+", r"\frac", "y", r"\beta", "1", "2", "B",
                                          "C"]


def test_extra_cases():
    """P3: sqrt with index, \\sum \\limits with limits, nested scripts."""
    labels = label_positions(_t(r"\sqrt [ 3 ] { x }"))
    assert labels.identifiers == ("M", "M", "ML", "M", "M", "MR", "M")
    assert (labels.levels[2], labels.relations[2]) == (1, L_CLASS)
    assert (labels.levels[5], labels.relations[5]) == (1, R_CLASS)

    labels = label_positions(_t(r"\sum \limits _ { i = 1 } ^ { n } a _ { i }"))
    assert labels.identifiers == ("M", "M", "M", "M", "MR", "MR", "MR", "M", "M", "M", "ML", "M",
                                  "M", "M", "M", "MR", "M")

    labels = label_positions(_t(r"y ^ { \beta _ { 1 } }"))
    assert labels.identifiers == ("M", "M", "M", "ML", "ML", "ML", "MLR", "ML", "M")
    assert (labels.levels[6], labels.relations[6]) == (2, R_CLASS)


def test_five_deep_nesting_policies():
    """P3: levels 0..4 and e (nesting 5) also at level 4; relpos by the overflow policy."""
    tokens = _t("x ^ { a ^ { b ^ { c ^ { d ^ { e } } } } }")
    labels = label_positions(tokens)
    assert [labels.levels[tokens.index(s)] for s in "xabcde"] == [0, 1, 2, 3, 4, 4]
    assert labels.identifiers[tokens.index("e")] == "MLLLLL"
    assert labels.vectors[tokens.index("e")] == (4, 4, 4, 4, 4)
    # e's path is L·L·L·L·R·M: "truncate" (reference) keeps path[3] = L, "innermost" gives R.
    tokens = _t("x ^ { a ^ { b ^ { c ^ { d _ { e } } } } }")
    e = tokens.index("e")
    assert label_positions(tokens).relations[e] == L_CLASS
    assert label_positions(tokens, overflow="innermost").relations[e] == R_CLASS
    assert label_positions(tokens, overflow="innermost").levels[e] == 4


@pytest.mark.parametrize("latex", [
    "x ^ 2", "x _", r"\frac a b", r"\frac { a } b", r"\sqrt x", r"\sqrt [ 3 ] x", r"\sqrt [ 3",
    "{ x", "x }", "} x {", r"\sqrt [ { ] }",
])
def test_malformed_input_raises_or_falls_back(latex):
    """P8: malformed GT raises, or gives all-M under on_error='flat'."""
    tokens = latex.split()
    with pytest.raises(MalformedLatexError):
        label_positions(tokens)
    flat = label_positions(tokens, on_error="flat")
    assert flat.paths == (("M",),) * len(tokens)
    assert set(flat.levels) <= {0}


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="policy"):
        label_positions(["x"], overflow="clip")
    with pytest.raises(ValueError, match="stop"):
        bidirectional_targets([[3]], stop="pad")


KINDS = ["sym", "sym", "sup", "sub", "frac", "sqrt", "root", "lim"]


def _random_expression(rng: random.Random, prefix: tuple[str, ...], depth: int, index: bool = False
                       ) -> list:
    """A well-formed expression as (token, expected path) pairs, built top-down so the expected paths
    are known independently of the labeller. ``index``: directly inside a root index, where a bare ``]``
    or another root index would end it (as in LaTeX)."""
    out = []
    for _ in range(rng.randint(1, 3)):
        here = (*prefix, "M")
        kind = rng.choice([k for k in KINDS if not (index and k == "root")] if depth < 6 else ["sym"])
        if kind == "sym":
            symbols = ["x", "2", "+", r"\alpha", "(", "[", r"\{"] + ([] if index else ["]"])
            out.append((rng.choice(symbols), here))
        elif kind in ("sup", "sub", "lim"):
            if kind == "lim":
                out += [(r"\sum", here), (r"\limits", here)]
            else:
                out.append(("y", here))
            for script in (["_", "^"] if kind == "lim" else ["^" if kind == "sup" else "_"]):
                rel = "L" if script == "^" else "R"
                out += [(script, here), ("{", here), *_random_expression(rng, (*prefix, rel), depth + 1),
                        ("}", here)]
        elif kind == "frac":
            out += [(r"\frac", here), ("{", here), *_random_expression(rng, (*prefix, "L"), depth + 1),
                    ("}", here), ("{", here), *_random_expression(rng, (*prefix, "R"), depth + 1),
                    ("}", here)]
        else:
            out.append((r"\sqrt", here))
            if kind == "root":
                out += [("[", here), *_random_expression(rng, (*prefix, "L"), depth + 1, True), ("]", here)]
            out += [("{", here), *_random_expression(rng, (*prefix, "R"), depth + 1), ("}", here)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_nested_structures(seed):
    """Property: on random nestings of fractions, scripts, limits and roots with index, the labels equal
    the paths the generator built; labelling is deterministic and keeps the length."""
    pairs = _random_expression(random.Random(seed), (), 0)
    tokens = [t for t, _ in pairs]
    labels = label_positions(tokens)
    assert labels == label_positions(tokens)
    assert len(labels) == len(tokens) == len(labels.paths) == len(labels.levels) == len(labels.vectors)
    assert list(labels.paths) == [p for _, p in pairs]
    for path, level, rel, vec in zip(labels.paths, labels.levels, labels.relations, labels.vectors,
                                     strict=True):
        assert level == min(len(path), 5) - 1
        assert rel == (REL[path[min(len(path), 5) - 2]] if len(path) > 1 else M_CLASS)
        assert vec[:min(len(path), 5)] == tuple(REL[r] for r in path[:5])
        assert all(v == 0 for v in vec[len(path):])


def test_bidirectional_rows_and_vectors():
    """P4 and §4.3 Example 1: the l2r and r2l input rows and their 5-dim vectors."""
    tokens = _t("x ^ { 2 } + y")
    table: dict[str, int] = {}
    ids = _ids(tokens, table)
    tf = bidirectional_targets([ids, ids[:2]], [label_positions(tokens), label_positions(["x", "^"],
                                                                                            on_error="flat")])
    n = len(tokens)
    assert tf.tgt.shape == tf.out.shape == (4, n + 1)
    assert tf.pos_vectors.shape == (4, n + 1, 5)
    assert tf.tgt[0].tolist() == [SOS, *ids]
    assert tf.out[0].tolist() == [*ids, EOS]
    assert tf.tgt[2].tolist() == [EOS, *ids[::-1]]
    assert tf.out[2].tolist() == [*ids[::-1], SOS]
    assert tf.tgt[1].tolist() == [SOS, *ids[:2]] + [PAD] * (n - 2)
    assert tf.pos_vectors[0, 0].tolist() == [1, 0, 0, 0, 0]
    assert tf.pos_vectors[2, 0].tolist() == [2, 0, 0, 0, 0]
    assert tf.pos_vectors[1, 3:].abs().sum() == 0  # pad → zeros
    two = tokens.index("2")
    assert tf.pos_vectors[0, 1 + two].tolist() == [4, 3, 0, 0, 0]  # l2r input row: <sos> first
    assert tf.pos_vectors[2, 1 + (n - 1 - two)].tolist() == [4, 3, 0, 0, 0]  # r2l: reversed order
    assert tf.pos_vectors.dtype == torch.float32


def test_direction_invariance_alignment_and_stop_policy():
    """P5 (r2l = l2r reversed, token for token), P6 (targets at t describe out[t]), P7 (stop targets)."""
    seqs = ["x ^ { 2 } + y", r"\frac { a } { b + c }", r"\sqrt { x _ { i } }"]
    table: dict[str, int] = {}
    ids = [_ids(s.split(), table) for s in seqs]
    labels = [label_positions(s.split()) for s in seqs]
    tf = bidirectional_targets(ids, labels)
    b = len(seqs)
    for i, (seq, lab) in enumerate(zip(ids, labels, strict=True)):
        n = len(seq)
        l2r_lvl, r2l_lvl = tf.level[i, :n].tolist(), tf.level[b + i, :n].tolist()
        l2r_rel, r2l_rel = tf.relpos[i, :n].tolist(), tf.relpos[b + i, :n].tolist()
        assert (l2r_lvl, l2r_rel) == (list(lab.levels), list(lab.relations))
        assert (r2l_lvl, r2l_rel) == (l2r_lvl[::-1], l2r_rel[::-1])
        for t in range(n):  # P6: the label at t is that of the token out[t] = tgt[t+1]
            token = tf.out[i, t].item()
            assert token == tf.tgt[i, t + 1].item()
            assert lab.levels[seq.index(token)] == tf.level[i, t] or seq.count(token) > 1
        for row in (i, b + i):  # P7: stop position → level 0, relpos <eos>, in both directions
            assert (tf.level[row, n].item(), tf.relpos[row, n].item()) == (0, EOS_CLASS)
            assert (tf.level[row, n + 1:] == 0).all()
            assert (tf.relpos[row, n + 1:] == PAD_CLASS).all()
    ignored = bidirectional_targets(ids, labels, stop="ignore")
    for i, seq in enumerate(ids):
        for row in (i, b + i):
            assert ignored.level[row, len(seq)] == ignored.relpos[row, len(seq)] == IGNORE_INDEX
    # the stop target of a row does not depend on the other rows (padding, longest row)
    alone = bidirectional_targets(ids[2:], labels[2:])
    n = len(ids[2])
    assert alone.level[0, : n + 1].tolist() == tf.level[2, : n + 1].tolist()
    assert alone.relpos[1, : n + 1].tolist() == tf.relpos[b + 2, : n + 1].tolist()


def test_targets_without_labels_and_one_direction():
    tf = bidirectional_targets([[5, 6, 7]], directions=("r2l",))
    assert (tf.tgt.tolist(), tf.out.tolist()) == ([[EOS, 7, 6, 5]], [[7, 6, 5, SOS]])
    assert (tf.pos_vectors, tf.level, tf.relpos) == (None, None, None)
    with pytest.raises(ValueError, match="length"):
        bidirectional_targets([[5, 6]], [label_positions(["x"])])
