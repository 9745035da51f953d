"""LaTeX -> CROHME tokens, and back (posformer.md §2.3).

CROHME captions are pre-tokenised, space-separated and normalised: one token per symbol (digits and
letters are split, ``12`` is ``1 2``), every command is one token (``\\frac``, ``\\sqrt``, ``\\alpha``,
``\\sum``, ``\\limits``, ``\\sin``), and every script argument is braced (``x ^ { 2 }``,
``\\sum \\limits _ { i = 1 } ^ { n }``). :func:`tokenize_latex` brings raw LaTeX to that form:

- **Scripts, fractions, roots.** Arguments are braced whatever the input (``x^2`` -> ``x ^ { 2 }``,
  ``\\frac12`` -> ``\\frac { 1 } { 2 }``, ``\\sqrt[3]x`` -> ``\\sqrt [ 3 ] { x }``), as TeX parses them:
  an unbraced argument is one token. A base's scripts keep their written order (the spec has both
  ``_ { } ^ { }`` and ``^ { } _ { }``). Primes are TeX superscripts: ``f'`` -> ``f ^ { \\prime }``,
  ``f'^2`` -> ``f ^ { \\prime 2 }``.
- **\\limits** stays where it is written, directly after the operator it modifies (the spec's
  ``\\sum \\limits _ { i = 1 } ^ { n }``); it is not added where absent, since CROHME ground truth
  writes it only sometimes. ``keep_limits=False`` removes it. ``\\limits`` after a non-operator is a
  LaTeX error and raises. ``\\nolimits``/``\\displaylimits`` only change placement and are dropped.
- **\\left, \\right, \\big...** The vocabulary has no sizing commands, so they are dropped and their
  delimiter kept (``\\left( x \\right)`` -> ``( x )``); the invisible ``.`` delimiter vanishes.
- **Aliases** map spellings of the same glyph onto the vocabulary (``\\le`` -> ``\\leq``, ``\\to`` ->
  ``\\rightarrow``, ``\\lbrace`` -> ``\\{``, ``\\dfrac`` -> ``\\frac``, ``×`` -> ``\\times``). Glyph
  variants (``\\varphi``) are *not* aliased: they are different symbols.
- **Layout only.** Spacing (``\\,`` ``\\;`` ``\\quad`` ``~``) and style switches (``\\displaystyle``) draw
  nothing and are dropped; font wrappers ``\\mathrm{..}``/``\\text{..}``/``\\operatorname{..}`` are
  replaced by their content (``\\operatorname{sin}`` -> ``\\sin``).
- Braces of a bare group are kept (``{ a + b } ^ { 2 }`` needs them), so normalising CROHME captions
  changes nothing.

Everything else passes through as a token and is checked against the vocabulary: tokens it lacks are
**reported**, never dropped (``strict=True`` raises :class:`UnknownTokenError`; otherwise they stay in
place and are listed in :attr:`LatexTokens.unknown`). Malformed LaTeX (unbalanced braces, a missing
argument, a double superscript) raises :class:`LatexError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .vocab import Vocabulary, crohme_vocab

__all__ = ["LatexError", "LatexTokens", "UnknownTokenError", "detokenize", "split_latex", "tokenize_latex"]

_ALIASES = {
    "\\lt": "<", "\\gt": ">", "\\ne": "\\neq", "\\le": "\\leq", "\\leqslant": "\\leq", "\\ge": "\\geq",
    "\\geqslant": "\\geq", "\\to": "\\rightarrow", "\\dots": "\\ldots", "\\dotsc": "\\ldots",
    "\\dotsb": "\\cdots", "\\lbrace": "\\{", "\\rbrace": "\\}", "\\lbrack": "[", "\\rbrack": "]",
    "\\vert": "|", "\\lvert": "|", "\\rvert": "|", "\\mid": "|", "\\dfrac": "\\frac", "\\tfrac": "\\frac",
    "\\cfrac": "\\frac",
    # Unicode input (copied from documents or typed) for symbols the vocabulary has
    "−": "-", "×": "\\times", "÷": "\\div", "·": "\\cdot", "⋅": "\\cdot", "±": "\\pm", "≠": "\\neq",
    "≤": "\\leq", "≥": "\\geq", "∞": "\\infty", "→": "\\rightarrow", "…": "\\ldots", "⋯": "\\cdots",
    "∫": "\\int", "∑": "\\sum", "∈": "\\in", "∃": "\\exists", "∀": "\\forall", "′": "\\prime",
    "α": "\\alpha", "β": "\\beta", "γ": "\\gamma", "λ": "\\lambda", "μ": "\\mu", "φ": "\\phi", "π": "\\pi",
    "σ": "\\sigma", "θ": "\\theta", "Δ": "\\Delta", "Π": "\\Pi",
}
_LAYOUT = frozenset({
    "\\,", "\\:", "\\;", "\\!", "\\ ", "~", "\\quad", "\\qquad", "\\displaystyle", "\\textstyle",
    "\\scriptstyle", "\\scriptscriptstyle", "\\nolimits", "\\displaylimits",
})
_SIZED = frozenset({
    "\\left", "\\right", "\\middle", "\\big", "\\Big", "\\bigg", "\\Bigg", "\\bigl", "\\bigr", "\\Bigl",
    "\\Bigr", "\\biggl", "\\biggr", "\\Biggl", "\\Biggr", "\\bigm", "\\Bigm",
})
_FONT_WRAPPERS = frozenset({"\\mathrm", "\\mathit", "\\mathnormal", "\\text", "\\textrm", "\\textit",
                            "\\operatorname"})
_NAMED_FUNCTIONS = frozenset({"sin", "cos", "tan", "log", "lim"})  # \operatorname{sin} -> \sin
_SCRIPTS = ("^", "_")
_MAX_DEPTH = 100  # nesting of groups; deeper input is rejected before Python's recursion limit


class LatexError(ValueError):
    """LaTeX that cannot be tokenised (unbalanced braces, a missing argument, a double script...)."""


class UnknownTokenError(LatexError):
    """Tokens that the vocabulary lacks; ``unknown`` lists them in order of first appearance."""

    def __init__(self, latex: str, unknown: Sequence[str]) -> None:
        self.unknown = tuple(unknown)
        super().__init__(f"'{latex}': tokens not in the vocabulary: {' '.join(self.unknown)}")


@dataclass(frozen=True)
class LatexTokens:
    """Result of :func:`tokenize_latex`."""

    tokens: tuple[str, ...]  # normalised CROHME tokens, unknown ones included in place
    unknown: tuple[str, ...]  # distinct tokens the vocabulary lacks, in order of first appearance

    def __str__(self) -> str:
        return " ".join(self.tokens)


def _strip_math_delimiters(latex: str) -> str:
    text = latex.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\[", "\\]"), ("\\(", "\\)")):
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left):len(text) - len(right)].strip()
    return text


def split_latex(latex: str) -> list[str]:
    """Split LaTeX into raw tokens, with no normalisation (the lexing step of :func:`tokenize_latex`).

    Outer math delimiters (``$..$``, ``$$..$$``, ``\\[..\\]``, ``\\(..\\)``) and ``%`` comments are
    removed. A command is ``\\`` plus letters, or ``\\`` plus one other character; any other
    character is a token of its own.

    Args:
        latex: the LaTeX source.

    Returns:
        The raw tokens, e.g. ``x^{12}`` -> ``["x", "^", "{", "1", "2", "}"]``.

    Raises:
        LatexError: a trailing lone backslash.
    """
    text = _strip_math_delimiters(latex)
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "%":  # a comment runs to the end of the line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif char == "\\":
            j = i + 1
            while j < len(text) and text[j].isascii() and text[j].isalpha():
                j += 1
            if j == i + 1:  # a control symbol: \{ \, \\ and the like
                if j >= len(text):
                    raise LatexError(f"'{latex}': ends with a lone backslash")
                j += 1
            tokens.append(text[i:j])
            i = j
        else:
            tokens.append(char)
            i += 1
    return tokens


class _Parser:
    """Recursive descent over raw tokens, writing normalised tokens (see the module docstring)."""

    def __init__(self, latex: str, tokens: list[str], keep_limits: bool) -> None:
        self.latex = latex
        self.tokens = tokens
        self.keep_limits = keep_limits
        self.pos = 0
        self.depth = 0

    def error(self, message: str) -> LatexError:
        return LatexError(f"'{self.latex}': {message} (at token {self.pos})")

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end of input")
        self.pos += 1
        return _ALIASES.get(token, token)

    def parse(self) -> list[str]:
        out = self.expression(closer=None)
        if self.peek() is not None:
            raise self.error(f"unbalanced {self.peek()!r}")
        return out

    def expression(self, closer: str | None) -> list[str]:
        """Items up to ``closer`` (``}`` or ``]``, left unconsumed) or the end of input."""
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error(f"groups nested deeper than {_MAX_DEPTH}")
        out: list[str] = []
        while (token := self.peek()) is not None and token != closer:
            if token == "}":
                raise self.error("unbalanced '}'")
            out += self.item()
        if closer is not None and token is None:
            raise self.error(f"missing {closer!r}")
        self.depth -= 1
        return out

    def item(self) -> list[str]:
        """One base with its ``\\limits`` and scripts; a script with no base has an empty base."""
        base = [] if self.peek() in (*_SCRIPTS, "'") else self.atom(self.take())
        limits = []
        while self.peek() in ("\\limits", "\\nolimits", "\\displaylimits"):
            modifier = self.take()
            if len(base) != 1 or not base[0][1:].isalpha() or base[0] in ("\\frac", "\\sqrt"):
                raise self.error(f"{modifier} must follow an operator such as \\sum, not '{' '.join(base)}'")
            if modifier == "\\limits" and self.keep_limits:
                limits = ["\\limits"]
        return base + limits + self.scripts()

    def scripts(self) -> list[str]:
        """Primes and ``^``/``_`` arguments after a base, braced, in written order."""
        args: dict[str, list[str]] = {}
        while (token := self.peek()) in (*_SCRIPTS, "'"):
            if token == "'":
                if "^" in args:
                    raise self.error("a prime after a superscript (double superscript)")
                primes = []
                while self.peek() == "'":
                    self.pos += 1
                    primes.append("\\prime")
                args["^"] = primes
                if self.peek() == "^":  # f'^2 is f^{\prime 2}
                    self.pos += 1
                    args["^"] += self.argument("^")
                continue
            self.pos += 1
            if token in args:
                raise self.error("double superscript" if token == "^" else "double subscript")
            args[token] = self.argument(token)
        return [t for kind, arg in args.items() for t in (kind, "{", *arg, "}")]

    def argument(self, owner: str) -> list[str]:
        """The content of a mandatory argument: a braced group, or one (possibly structured) atom."""
        token = self.peek()
        if token is None or token in ("}", *_SCRIPTS):
            raise self.error(f"missing argument after {owner}")
        if token == "{":
            self.pos += 1
            inner = self.expression(closer="}")
            self.pos += 1
            return inner
        return self.atom(self.take())

    def atom(self, token: str) -> list[str]:
        """One symbol or structure, with its arguments; layout-only commands give nothing."""
        if token == "{":
            inner = self.expression(closer="}")
            self.pos += 1
            return ["{", *inner, "}"]
        if token == "\\frac":
            numerator = self.argument(token)
            return ["\\frac", "{", *numerator, "}", "{", *self.argument(token), "}"]
        if token == "\\sqrt":
            index = []
            if self.peek() == "[":
                self.pos += 1
                index = ["[", *self.expression(closer="]"), "]"]
                self.pos += 1
            return ["\\sqrt", *index, "{", *self.argument(token), "}"]
        if token in _SIZED:
            if self.peek() is None or self.peek() in ("{", "}"):
                raise self.error(f"{token} needs a delimiter")
            delimiter = self.take()
            return [] if delimiter == "." else [delimiter]
        if token in _FONT_WRAPPERS:
            content = self.argument(token)
            name = "".join(content)
            return [f"\\{name}"] if token == "\\operatorname" and name in _NAMED_FUNCTIONS else content
        if token in ("\\limits", "\\nolimits", "\\displaylimits"):
            raise self.error(f"{token} must follow an operator such as \\sum")
        if token in _LAYOUT:
            return []
        return [token]


def tokenize_latex(latex: str, *, vocab: Vocabulary | None = None, strict: bool = True,
                   keep_limits: bool = True) -> LatexTokens:
    """Raw LaTeX -> normalised CROHME tokens (rules in the module docstring).

    Args:
        latex: the source, with or without ``$`` delimiters.
        vocab: the vocabulary that decides which tokens are unknown; default :func:`crohme_vocab`.
        strict: raise on unknown tokens; otherwise keep them in place and list them.
        keep_limits: keep ``\\limits`` where written (the CROHME convention), or remove it.

    Returns:
        The tokens and the unknown ones, e.g. ``x^2`` -> ``x ^ { 2 }`` with nothing unknown.

    Raises:
        UnknownTokenError: with ``strict``, when a token is not in the vocabulary (all are listed).
        LatexError: malformed LaTeX; the message quotes the input and the token position.
    """
    tokens = _Parser(latex, split_latex(latex), keep_limits).parse()
    unknown = (vocab or crohme_vocab()).unknown(tokens)
    if unknown and strict:
        raise UnknownTokenError(latex, unknown)
    return LatexTokens(tuple(tokens), tuple(unknown))


def detokenize(tokens: Sequence[str], *, compact: bool = False) -> str:
    """Tokens -> a LaTeX string that :func:`tokenize_latex` turns back into the same tokens.

    Args:
        tokens: CROHME tokens (no specials).
        compact: drop the spaces LaTeX does not need (``x^{2}``); by default tokens are joined with
            single spaces, the caption format (``x ^ { 2 }``).

    Returns:
        The LaTeX source.
    """
    if not compact:
        return " ".join(tokens)
    parts: list[str] = []
    for token in tokens:
        # a control word swallows the letters after it, so "\sin x" keeps its space
        if parts and parts[-1][1:].isalpha() and parts[-1].startswith("\\") and token[:1].isalpha():
            parts.append(" ")
        parts.append(token)
    return "".join(parts)
