"""Random formulas in CROHME token form, and their stable train/test split (``recognizers synth math``).

A small recursive grammar writes token lists directly in the normalised caption form of
posformer.md §2.3 (``x ^ { 2 }``, ``\\frac { a } { b }``, ``\\sum _ { i = 1 } ^ { n }``), using only
the 110 regular CROHME tokens. It covers what handwritten-math corpora hold: numbers and letters,
Greek letters, binary operators, relations, brackets (``( ) [ ] \\{ \\} | |``), fractions, roots with
and without an index, nested sub- and superscripts, primes, factorials, functions (``\\sin``,
``\\cos``, ``\\tan``, ``\\log``, ``f ( x )``), sums, integrals and limits with their limits, dots
(``\\ldots``, ``\\cdots``) and quantified statements (``\\forall``, ``\\exists``, ``\\in``).

A depth budget bounds nesting and a token budget (``MAX_TOKENS``) bounds the caption: a formula
over budget is drawn again from the same generator, so the result stays deterministic for it.

The split is a BLAKE2b hash of the caption (not Python's salted ``hash()``): a fixed share of the
hash space (``TEST_SHARE``) is test, the rest train, on every machine, for every seed and corpus
size. A test caption therefore never appears in any train split made by the same version.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = [
    "FUNCTIONS",
    "GREEK",
    "MAX_TOKENS",
    "RELATIONS",
    "TEST_SHARE",
    "caption_split",
    "sample_caption",
    "sample_for_split",
]

MAX_TOKENS = 40  # caption budget: CROHME captions are mostly short; long ones render too small
MIN_TOKENS = 3
TEST_SHARE = 0.2  # share of the caption hash space that is test (fixed: independent of corpus size)
MAX_DEPTH = 3

DIGITS = tuple("0123456789")
# Letters weighted towards those that formulas use most; every CROHME letter can appear.
LOWER = tuple("abcdefghijklmnopqrstuvwxyz")
COMMON_LOWER = tuple("abcnxyzkt")
UPPER = ("A", "B", "C", "E", "F", "G", "H", "I", "L", "M", "N", "P", "R", "S", "T", "V", "X", "Y")
GREEK = ("\\alpha", "\\beta", "\\gamma", "\\lambda", "\\mu", "\\phi", "\\pi", "\\sigma", "\\theta",
         "\\Delta", "\\Pi")
FUNCTIONS = ("\\sin", "\\cos", "\\tan", "\\log")
BINARY = ("+", "+", "-", "-", "\\times", "\\div", "\\cdot", "\\pm", "/")
RELATIONS = ("=", "=", "=", "<", ">", "\\leq", "\\geq", "\\neq", "\\rightarrow")
BRACKETS = (("(", ")"), ("(", ")"), ("[", "]"), ("\\{", "\\}"), ("|", "|"))
BIG_OPERATORS = ("\\sum", "\\int", "\\lim")
INDICES = ("i", "j", "k", "n")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _braced(tokens: list[str]) -> list[str]:
    return ["{", *tokens, "}"]


def _letter(rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.55:
        return [_pick(rng, COMMON_LOWER)]
    if r < 0.75:
        return [_pick(rng, LOWER)]
    if r < 0.87:
        return [_pick(rng, UPPER)]
    return [_pick(rng, GREEK)]


def _number(rng: np.random.Generator) -> list[str]:
    digits = int(rng.choice([1, 1, 1, 2, 2, 3]))
    tokens = [_pick(rng, DIGITS[1:]) if digits > 1 else _pick(rng, DIGITS)]
    tokens += [_pick(rng, DIGITS) for _ in range(digits - 1)]
    if rng.random() < 0.1:  # a decimal
        tokens += [".", _pick(rng, DIGITS)]
    return tokens


def _atom(rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.5:
        return _letter(rng)
    if r < 0.95:
        return _number(rng)
    return ["\\infty"]


def _script(rng: np.random.Generator, depth: int) -> list[str]:
    """A script argument: mostly short, sometimes itself scripted (nesting)."""
    r = rng.random()
    if depth > 0 and r < 0.2:
        return _scripted(rng, depth - 1)
    if r < 0.45:
        return _atom(rng)
    if r < 0.6:
        return [_pick(rng, ("-", "+")), *_atom(rng)]
    if r < 0.85:
        return [*_letter(rng), _pick(rng, ("+", "-")), *_number(rng)]
    return ["\\prime"]


def _scripted(rng: np.random.Generator, depth: int) -> list[str]:
    """An atom with a superscript, a subscript or both (either order, as CROHME captions have)."""
    if rng.random() < 0.2:  # numbers take powers only ("2 ^ { n }"), never indices or primes
        return [_pick(rng, DIGITS[2:]), "^", *_braced(_atom(rng))]
    base = _letter(rng)
    r = rng.random()
    if r < 0.45:
        return [*base, "^", *_braced(_script(rng, depth))]
    if r < 0.75:
        return [*base, "_", *_braced(_script(rng, depth))]
    sub, sup = ["_", *_braced(_script(rng, depth))], ["^", *_braced(_script(rng, depth))]
    return [*base, *sub, *sup] if r < 0.92 else [*base, *sup, *sub]


def _big_operator(rng: np.random.Generator, depth: int) -> list[str]:
    op = _pick(rng, BIG_OPERATORS)
    if op == "\\lim":
        var = _pick(rng, ("x", "n", "h", "t"))
        target = ["\\infty"] if var == "n" else _atom(rng)
        return ["\\lim", "_", *_braced([var, "\\rightarrow", *target]), *_term(rng, depth - 1)]
    if op == "\\sum":
        i = _pick(rng, INDICES[:3])
        limits = ["_", *_braced([i, "=", _pick(rng, ("0", "1"))]), "^", *_braced(
            [_pick(rng, ("n", "N", "\\infty", "m"))])]
        head = ["\\sum", "\\limits", *limits] if rng.random() < 0.3 else ["\\sum", *limits]
        return [*head, *_term(rng, depth - 1)]
    var = _pick(rng, ("x", "t", "u"))
    lower, upper = (["0"], ["\\infty"]) if rng.random() < 0.3 else (_atom(rng), _atom(rng))
    body = _expression(rng, depth - 1, max_terms=2)
    return ["\\int", "_", *_braced(lower), "^", *_braced(upper), *body, "d", var]


def _function(rng: np.random.Generator, depth: int) -> list[str]:
    name = _pick(rng, (*FUNCTIONS, "f", "g"))
    head = [name]
    if name == "\\log" and rng.random() < 0.4:
        head += ["_", *_braced([_pick(rng, ("2", "a", "b", "e"))])]
    elif name != "\\log" and name.startswith("\\") and rng.random() < 0.2:
        head += ["^", *_braced(["2"])]
    if name in ("f", "g") or rng.random() < 0.5:
        return [*head, "(", *_expression(rng, depth - 1, max_terms=2), ")"]
    return [*head, *_letter(rng)]


def _term(rng: np.random.Generator, depth: int) -> list[str]:
    """One operand: an atom, or a structure when the depth budget allows."""
    r = rng.random()
    if depth <= 0 or r < 0.25:
        return _atom(rng)
    if r < 0.42:
        return _scripted(rng, depth - 1)
    if r < 0.56:
        num, den = _expression(rng, depth - 1, max_terms=2), _expression(rng, depth - 1, max_terms=2)
        return ["\\frac", *_braced(num), *_braced(den)]
    if r < 0.66:
        radicand = _braced(_expression(rng, depth - 1, max_terms=2))
        if rng.random() < 0.3:
            return ["\\sqrt", "[", _pick(rng, ("3", "3", "4", "n")), "]", *radicand]
        return ["\\sqrt", *radicand]
    if r < 0.78:
        left, right = _pick(rng, BRACKETS)
        group = [left, *_expression(rng, depth - 1, max_terms=3), right]
        if rng.random() < 0.2 and left == "(":
            group += ["^", *_braced(_script(rng, 0))]
        return group
    if r < 0.9:
        return _function(rng, depth)
    return _big_operator(rng, depth)


def _expression(rng: np.random.Generator, depth: int, *, max_terms: int = 4) -> list[str]:
    """Terms joined by binary operators, sometimes by juxtaposition (``2 x``)."""
    tokens = _term(rng, depth)
    for _ in range(int(rng.integers(max_terms))):
        if rng.random() < 0.2 and tokens[-1] in DIGITS:
            tokens += _letter(rng)  # a coefficient: "2 x"
            continue
        tokens += [_pick(rng, BINARY), *_term(rng, depth)]
    if rng.random() < 0.04 and tokens[-1] in (*DIGITS, *LOWER):
        tokens.append("!")
    return tokens


def _statement(rng: np.random.Generator) -> list[str]:
    """Forms that are not an operator tree: sequences, quantifiers, membership."""
    r = rng.random()
    a = _pick(rng, ("a", "x", "b"))
    if r < 0.35:
        dots, sep = ("\\cdots", "+") if rng.random() < 0.5 else ("\\ldots", ",")
        return [a, "_", "{", "1", "}", sep, a, "_", "{", "2", "}", sep, dots, sep, a, "_", "{", "n", "}"]
    if r < 0.7:
        quantifier, var = _pick(rng, ("\\forall", "\\exists")), _pick(rng, ("x", "n", "y"))
        return [quantifier, var, "\\in", _pick(rng, UPPER), ",", var, _pick(rng, RELATIONS[3:8]),
                *_atom(rng)]
    left, right = _pick(rng, (("[", "]"), ("(", ")"), ("\\{", "\\}")))
    return [*_letter(rng), "\\in", left, *_number(rng), ",", *_number(rng), right]


def _formula(rng: np.random.Generator) -> list[str]:
    depth = int(rng.integers(1, MAX_DEPTH + 1))
    r = rng.random()
    if r < 0.5:
        return [*_expression(rng, depth), _pick(rng, RELATIONS), *_expression(rng, depth - 1, max_terms=3)]
    if r < 0.9:
        return _expression(rng, depth)
    return _statement(rng)


def sample_caption(rng: np.random.Generator, *, max_tokens: int = MAX_TOKENS) -> list[str]:
    """One random formula as CROHME tokens, ``MIN_TOKENS`` to ``max_tokens`` long.

    Args:
        rng: the generator every choice comes from (the result depends on it alone).
        max_tokens: the token budget; longer draws are discarded and drawn again.

    Returns:
        The caption's tokens, all in the CROHME vocabulary.
    """
    while True:  # terminates: single-term formulas are well within budget and frequent
        tokens = _formula(rng)
        if MIN_TOKENS <= len(tokens) <= max_tokens:
            return tokens


def caption_split(tokens: list[str] | tuple[str, ...] | str) -> str:
    """``"train"`` or ``"test"`` for a caption: a stable hash of its space-joined tokens.

    Args:
        tokens: the caption's tokens, or the caption text (single spaces between tokens).
    """
    text = tokens if isinstance(tokens, str) else " ".join(tokens)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"synthmath").digest()
    return "test" if int.from_bytes(digest, "big") / 2**64 < TEST_SHARE else "train"


def sample_for_split(rng: np.random.Generator, split: str, *, max_tokens: int = MAX_TOKENS) -> list[str]:
    """A caption whose hash falls in ``split``: draws until one does (about 1.25 draws for train, 5 for test).

    Args:
        rng: the item's own generator.
        split: ``"train"`` or ``"test"``.
        max_tokens: the token budget.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    while True:
        tokens = sample_caption(rng, max_tokens=max_tokens)
        if caption_split(tokens) == split:
            return tokens
