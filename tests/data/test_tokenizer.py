from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from pipeline.data.tokenizer import SPECIAL_TOKENS, load_word_tokenizer, train_word_tokenizer
from pipeline.errors import DataFormatError

TEXTS = [
    "a large red circle in the top left",
    "two shapes : a red circle and a blue square",
    "how many shapes are there ? 2",
    "is there a blue star ? no",
    "A Red Square.",
]


@pytest.fixture
def tokenizer_dir(tmp_path):
    train_word_tokenizer(TEXTS, tmp_path / "tok")
    return tmp_path / "tok"


def test_special_tokens_have_ids_0_to_4(tokenizer_dir):
    tok = load_word_tokenizer(tokenizer_dir)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<bos>", "<eos>", "<unk>", "<image>"]
    assert list(SPECIAL_TOKENS.values()) == ["<pad>", "<bos>", "<eos>", "<unk>", "<image>"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_round_trip_without_automatic_bos_eos(tokenizer_dir):
    tok = load_word_tokenizer(tokenizer_dir)
    text = "two shapes : a red circle and a blue square"
    ids = tok.encode(text)
    assert 1 not in ids and 2 not in ids
    assert len(ids) == len(text.split())
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode([1, *ids, 2, 0, 0], skip_special_tokens=True) == text


def test_lowercases_and_splits_punctuation(tokenizer_dir):
    tok = load_word_tokenizer(tokenizer_dir)
    assert tok.encode("A RED square.") == tok.encode("a red square .")


def test_unknown_words_map_to_unk(tokenizer_dir):
    tok = load_word_tokenizer(tokenizer_dir)
    assert tok.encode("a zebra") == [tok.convert_tokens_to_ids("a"), 3]


def test_image_token_is_never_split(tokenizer_dir):
    tok = load_word_tokenizer(tokenizer_dir)
    assert tok.encode("<image><image>a red circle")[:2] == [4, 4]
    assert "<image>" in tok.all_special_tokens


def test_min_frequency_drops_rare_words(tmp_path):
    tok = train_word_tokenizer(TEXTS, tmp_path / "tok", min_frequency=2)
    assert tok.encode("star") == [3] and tok.encode("red") != [3]


def test_reloads_through_auto_tokenizer(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok.convert_tokens_to_ids("<image>") == 4
    assert tok.decode(tok.encode("is there a blue star ?"), skip_special_tokens=True) == "is there a blue star ?"


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match=r"no tokenizer in .*nowhere.*prepare stage"):
        load_word_tokenizer(tmp_path / "nowhere")
