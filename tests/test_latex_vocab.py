"""The CROHME vocabulary and the LaTeX tokenizer (posformer.md §2.3; §13 V1, V2)."""

from __future__ import annotations

import random

import pytest
import torch

from data.latex import LatexError, UnknownTokenError, detokenize, split_latex, tokenize_latex
from data.vocab import CROHME_TOKENS, SPECIAL_TOKENS, Vocabulary, crohme_vocab

# ids the reference hard-codes (posformer.md §1); the project looks them up, these pin the file order
REFERENCE_IDS = {"{": 110, "}": 112, "^": 82, "_": 83, "[": 42, "]": 81, "\\frac": 53, "\\sqrt": 74}

# CROHME-normalised captions from the spec (§2.3, §4.1, §4.3)
SPEC_CAPTIONS = [
    "x ^ { 2 } + y",
    "\\frac { a } { b + c }",
    "\\sqrt { x _ { i } }",
    "\\sqrt [ 3 ] { x }",
    "\\sum \\limits _ { i = 1 } ^ { n } a _ { i }",
    "y ^ { \\beta _ { 1 } }",
    "x ^ { a ^ { b ^ { c ^ { d ^ { e } } } } }",
    "A y ^ { 3 } _ { 1 } + \\frac { y ^ { \\beta _ { 1 } } _ { 2 } B } { C }",
    "\\lim _ { x \\rightarrow 0 } \\frac { \\sin x } { x } = 1",
    "\\{ a , b \\} \\in [ 0 , 1 ] | x | \\leq \\infty",
]


def test_crohme_vocabulary_has_113_classes_with_fixed_specials():
    vocab = crohme_vocab()
    assert len(CROHME_TOKENS) == 110
    assert len(vocab) == 113
    assert (vocab.pad_id, vocab.sos_id, vocab.eos_id) == (0, 1, 2)
    assert vocab.tokens[:3] == SPECIAL_TOKENS
    assert [vocab.token_to_id(t) for t in CROHME_TOKENS] == list(range(3, 113))
    assert {t: vocab.token_to_id(t) for t in REFERENCE_IDS} == REFERENCE_IDS
    assert list(CROHME_TOKENS) == sorted(CROHME_TOKENS, key=lambda t: t.encode())  # dictionary.txt order
    assert crohme_vocab() is vocab  # cached factory


def test_spec_groups_are_all_in_the_vocabulary():
    # the spec's lists, copied as written in posformer.md §2.3
    punctuation = r"! ( ) + , - . / < = > [ ] | \{ \}"
    greek = r"\alpha \beta \gamma \lambda \mu \phi \pi \sigma \theta \Delta \Pi"
    operators = (r"\cdot \cdots \ldots \div \times \pm \neq \leq \geq \in \infty \int \sum \lim \limits"
                 r" \log \sin \cos \tan \exists \forall \prime \rightarrow")
    structure = r"\frac \sqrt ^ _ { }"
    spec_listed = " ".join((punctuation, greek, operators, structure)).split()
    letters = [t for t in CROHME_TOKENS if t.isalpha()]
    assert not crohme_vocab().unknown(spec_listed + list("0123456789"))
    assert len(spec_listed) + 10 + len(letters) == 110
    assert "".join(t for t in letters if t.isupper()) == "ABCEFGHILMNPRSTVXY"


def test_dictionary_file_order_gives_ids_and_lookup_is_by_string(tmp_path):
    shuffled = list(CROHME_TOKENS)
    random.Random(3).shuffle(shuffled)
    path = tmp_path / "dictionary.txt"
    path.write_text("\n".join(shuffled) + "\n\n", encoding="utf-8")
    vocab = Vocabulary.from_file(path)
    assert len(vocab) == 113
    assert [vocab.token_to_id(t) for t in shuffled] == list(range(3, 113))  # V1: file order from 3
    caption = SPEC_CAPTIONS[7].split()
    assert vocab.decode(vocab.encode(caption)) == caption  # V2: same tokens whatever the ids
    assert vocab != crohme_vocab()


def test_encode_decode_and_errors():
    vocab = crohme_vocab()
    ids = vocab.encode(["x", "^", "{", "2", "}"])
    assert vocab.decode(torch.tensor([vocab.sos_id, *ids, vocab.eos_id, 0, 0])) == ["x", "^", "{", "2", "}"]
    assert vocab.decode([1, ids[0], 2], keep_specials=True) == ["<sos>", "x", "<eos>"]
    with pytest.raises(KeyError, match=r"\\hat \\mathbb"):
        vocab.encode(["x", "\\hat", "\\mathbb", "\\hat"])
    with pytest.raises(KeyError, match=r"^token \\alpha2 is not in the vocabulary$"):
        vocab.token_to_id("\\alpha2")
    with pytest.raises(ValueError, match="outside"):
        vocab.decode([113])
    assert "\\alpha" in vocab
    assert "<pad>" in vocab
    assert "\\varphi" not in vocab


@pytest.mark.parametrize(("tokens", "message"), [
    (["a", "b", "a"], "twice"), (["a", "<sos>"], "special"), (["a b"], "whitespace"), ([], "at least"),
])
def test_vocabulary_rejects_bad_token_lists(tokens, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(tokens)


@pytest.mark.parametrize(("latex", "expected"), [
    ("x^2", "x ^ { 2 }"),
    ("$x^{2}+y$", "x ^ { 2 } + y"),
    ("x^{12}", "x ^ { 1 2 }"),
    ("\\frac12", "\\frac { 1 } { 2 }"),
    ("\\dfrac{a}{b+c}", "\\frac { a } { b + c }"),
    ("\\sqrt{x_i}", "\\sqrt { x _ { i } }"),
    ("\\sqrt[3]x", "\\sqrt [ 3 ] { x }"),
    ("\\sum\\limits_{i=1}^n a_i", "\\sum \\limits _ { i = 1 } ^ { n } a _ { i }"),
    ("\\sum_{i=1}^{n}", "\\sum _ { i = 1 } ^ { n }"),  # \limits is not invented where absent
    ("\\int\\nolimits_0^1 f", "\\int _ { 0 } ^ { 1 } f"),
    ("x^2_1", "x ^ { 2 } _ { 1 }"),  # scripts keep their written order
    ("Ay^{3}_{1}+\\frac{y^{\\beta_{1}}_{2}B}{C}", SPEC_CAPTIONS[7]),
    ("x^\\frac12", "x ^ { \\frac { 1 } { 2 } }"),
    ("\\left( x \\right)", "( x )"),
    ("\\left\\{ a \\right\\}", "\\{ a \\}"),
    ("\\left.\\frac{d}{dx}\\right|_{x=0}", "\\frac { d } { d x } | _ { x = 0 }"),
    ("\\bigl[ x \\bigr]", "[ x ]"),
    ("f'(x)", "f ^ { \\prime } ( x )"),
    ("f''^2", "f ^ { \\prime \\prime 2 }"),
    ("\\lim_{x\\to 0}\\frac{\\sin x}{x}", "\\lim _ { x \\rightarrow 0 } \\frac { \\sin x } { x }"),
    ("a \\le b \\ne c \\ge d \\lt e", "a \\leq b \\neq c \\geq d < e"),
    ("\\int_0^1 x \\, dx \\quad", "\\int _ { 0 } ^ { 1 } x d x"),
    ("\\operatorname{sin} x + \\mathrm{d} y", "\\sin x + d y"),
    ("{a+b}^{2}", "{ a + b } ^ { 2 }"),
    ("x % a comment\n+ 1", "x + 1"),
    ("α × β ≤ ∞", "\\alpha \\times \\beta \\leq \\infty"),
    ("x_{}", "x _ { }"),
])
def test_normalisation(latex, expected):
    result = tokenize_latex(latex)
    assert " ".join(result.tokens) == expected
    assert result.unknown == ()


@pytest.mark.parametrize("caption", SPEC_CAPTIONS)
def test_captions_round_trip(caption):
    tokens = caption.split()
    assert list(tokenize_latex(caption).tokens) == tokens  # normalised captions are a fixed point
    assert detokenize(tokens) == caption
    compact = detokenize(tokens, compact=True)
    assert " " not in compact.replace("\\sin x", "")
    assert list(tokenize_latex(compact).tokens) == tokens


def test_compact_detokenize_keeps_needed_spaces():
    assert detokenize(["\\sin", "x", "+", "\\alpha", "2"], compact=True) == "\\sin x+\\alpha2"
    assert detokenize(["x", "^", "{", "2", "}"], compact=True) == "x^{2}"


def test_unknown_tokens_are_reported_never_dropped():
    with pytest.raises(UnknownTokenError, match=r"\\hat \\mathbb \*") as caught:
        tokenize_latex("\\hat{x} + \\mathbb{R} * \\hat y")
    assert caught.value.unknown == ("\\hat", "\\mathbb", "*")
    lenient = tokenize_latex("\\hat{x} * 2", strict=False)
    assert lenient.tokens == ("\\hat", "{", "x", "}", "*", "2")
    assert lenient.unknown == ("\\hat", "*")
    assert tokenize_latex("\\varphi", strict=False).unknown == ("\\varphi",)  # glyph variants not aliased


def test_custom_vocabulary_decides_what_is_unknown():
    small = Vocabulary(["x", "^", "{", "}", "2"])
    assert tokenize_latex("x^2", vocab=small).unknown == ()
    assert tokenize_latex("x_2", vocab=small, strict=False).unknown == ("_",)


def test_limits_policy():
    assert tokenize_latex("\\sum\\limits_{i}", keep_limits=False).tokens == ("\\sum", "_", "{", "i", "}")
    with pytest.raises(LatexError, match="must follow an operator"):
        tokenize_latex("x\\limits_{i}")
    with pytest.raises(LatexError, match="must follow an operator"):
        tokenize_latex("\\limits")


@pytest.mark.parametrize(("latex", "message"), [
    ("x^", "missing argument after \\^"),
    ("x^}", "missing argument"),
    ("{x", "missing '}'"),
    ("x}", "unbalanced '}'"),
    ("\\sqrt[3{x}", "missing ']'"),
    ("x^a^b", "double superscript"),
    ("x_a_b", "double subscript"),
    ("x^a'", "double superscript"),
    ("\\frac{a}", r"missing argument after \\frac"),
    ("\\left", "needs a delimiter"),
    ("x \\", "lone backslash"),
    ("{" * 150 + "}" * 150, "nested deeper"),
])
def test_malformed_latex_raises(latex, message):
    with pytest.raises(LatexError, match=message):
        tokenize_latex(latex)


def test_split_latex_is_lexing_only():
    assert split_latex("$\\frac{ab}{\\alpha}\\,x$") == [
        "\\frac", "{", "a", "b", "}", "{", "\\alpha", "}", "\\,", "x"]
    assert split_latex("\\{ \\\\") == ["\\{", "\\\\"]
