"""Tokenizer tests (samba-asr.md §13.7 A4): in-memory sentencepiece training, round trips, stored form."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm
import torch

from data.tokenizer import LIBRISPEECH_CHARS, SentencePieceTokenizer

SENTENCES = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER",
    "TURNIPS AND CARROTS AND BRUISED POTATOES AND FAT MUTTON PIECES",
    "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM",
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE",
    "THE SQUALID QUARTER OF THE BROTHELS",
    "HELLO BERTIE ANY GOOD IN YOUR MIND",
    "NUMBER TEN FRESH NELLY IS WAITING ON YOU GOOD NIGHT HUSBAND",
    "THE MUSIC CAME NEARER AND HE RECALLED THE WORDS",
    "SHE DIDN'T SEEM TO NOTICE THAT THE LAMP HAD GONE OUT",
    "WE'LL MEET AGAIN AT THE OLD MILL BY THE RIVER",
    "IT'S A LONG WAY TO THE TOWN ACROSS THE HILLS",
    "THE CAPTAIN'S BOAT WAS TIED TO THE WOODEN PIER",
    "A QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "THEY WALKED IN SILENCE UNTIL THEY REACHED THE GATE",
    "HIS VOICE WAS LOW AND HIS HANDS TREMBLED",
    "THE CHILDREN PLAYED IN THE GARDEN ALL AFTERNOON",
    "I CANNOT TELL YOU HOW GLAD I AM TO SEE YOU",
    "THE WIND HOWLED THROUGH THE EMPTY STREETS",
    "SHE OPENED THE LETTER AND READ IT TWICE",
    "THERE WAS NOTHING LEFT BUT TO WAIT FOR MORNING",
    "THE OLD WOMAN SAT BY THE FIRE KNITTING",
    "HE SAID THAT HE WOULD RETURN BEFORE THE WINTER",
    "O'ER THE MEADOWS THE BELLS RANG OUT",
    "THE DOCTOR EXAMINED THE BOY VERY CAREFULLY",
    "YOU MUST NOT GO OUT IN THIS WEATHER",
    "THE TRAIN WAS LATE AND THE STATION WAS COLD",
    "EVERY MORNING HE WALKED TO THE VILLAGE FOR BREAD",
    "THE KING'S MEN RODE THROUGH THE FOREST AT DAWN",
    "WHY DO YOU ALWAYS ASK SUCH QUESTIONS",
    "THE SHIP SAILED AWAY AND WAS NEVER SEEN AGAIN",
    "HER EYES WERE BRIGHT WITH TEARS",
    "THE JUDGE LOOKED AT THE PRISONER FOR A LONG TIME",
    "MY FATHER KEPT BEES IN THE ORCHARD",
    "THE PATH ZIGZAGGED UP THE SIDE OF THE MOUNTAIN",
    "WE SHALL SEE WHAT TOMORROW BRINGS",
    "HE COULDN'T REMEMBER WHERE HE HAD PUT THE KEY",
]


@pytest.fixture(scope="module", params=[("unigram", 96), ("bpe", 80)], ids=["unigram", "bpe"])
def trained(request) -> tuple[SentencePieceTokenizer, str, int]:
    model_type, vocab_size = request.param
    return SentencePieceTokenizer.train(SENTENCES, vocab_size, model_type), model_type, vocab_size


def test_round_trip_at_configured_vocabulary_size(trained):
    tokenizer, _, vocab_size = trained
    assert tokenizer.vocab_size == vocab_size
    for sentence in SENTENCES:
        ids = tokenizer.encode(sentence)
        assert ids
        assert min(ids) > tokenizer.eos_id  # specials never come out of encode
        assert tokenizer.unk_id not in ids
        assert tokenizer.decode(ids) == sentence


def test_every_letter_and_the_apostrophe_are_covered(trained):
    tokenizer, _, _ = trained
    text = " ".join(LIBRISPEECH_CHARS)  # includes letters absent from the corpus
    assert tokenizer.unk_id not in tokenizer.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.unk_id in tokenizer.encode("CAFÉ")  # unseen characters map to <unk>


def test_special_ids_are_fixed_and_skipped_by_decode(trained):
    tokenizer, _, _ = trained
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<blank>", "<sos>", "<eos>", "<unk>"]
    assert (tokenizer.blank_id, tokenizer.sos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    ids = tokenizer.encode("THE DOG")
    assert tokenizer.decode([1, *ids[:1], 0, 0, *ids[1:], 2, 0]) == "THE DOG"
    assert tokenizer.decode(torch.tensor(ids)) == "THE DOG"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


def test_bytes_and_base64_round_trips_give_identical_encodings(trained):
    tokenizer, _, _ = trained
    from_bytes = SentencePieceTokenizer.from_bytes(tokenizer.to_bytes())
    text = tokenizer.to_base64()
    assert isinstance(text, str)
    assert text.isascii()
    from_text = SentencePieceTokenizer.from_base64(text)
    for copy in (from_bytes, from_text):
        assert copy.to_bytes() == tokenizer.to_bytes()
        assert [copy.encode(s) for s in SENTENCES] == [tokenizer.encode(s) for s in SENTENCES]


def test_training_is_deterministic(trained):
    tokenizer, model_type, vocab_size = trained
    again = SentencePieceTokenizer.train(list(SENTENCES), vocab_size, model_type)
    assert again.to_bytes() == tokenizer.to_bytes()


def test_clear_errors():
    with pytest.raises(ValueError, match="at most"):
        SentencePieceTokenizer.train(SENTENCES[:3], 500)
    with pytest.raises(ValueError, match="too small"):
        SentencePieceTokenizer.train(SENTENCES, 16)
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer.train(SENTENCES, 64, "word")
    with pytest.raises(ValueError, match="no text"):
        SentencePieceTokenizer.train(["", "  "], 64)
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        SentencePieceTokenizer.from_bytes(b"not a model")
    with pytest.raises(ValueError, match="base64"):
        SentencePieceTokenizer.from_base64("not base64 !")


def test_models_with_other_special_ids_are_rejected():
    buffer = io.BytesIO()  # sentencepiece's defaults: <unk> 0, <s> 1, </s> 2, no padding
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=buffer, vocab_size=40,
                                   minloglevel=2)
    with pytest.raises(ValueError, match="expected"):
        SentencePieceTokenizer.from_bytes(buffer.getvalue())
