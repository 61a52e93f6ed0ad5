"""Word-level tokenizer for models trained from scratch, built with Hugging Face `tokenizers`.

One token per word: the synthetic text has a vocabulary of ~100 words, so sub-word units would
only make sequences longer. Text is lower-cased and split on whitespace and punctuation
(`Whitespace` pre-tokenizer), so real COCO captions ("A dog.") tokenise like the synthetic
ones ("a dog ."). The saved directory loads with `AutoTokenizer.from_pretrained`.

Special tokens have fixed ids 0..4 in the order of `SPECIAL_TOKENS`. Encoding never adds
`<bos>`/`<eos>` (callers lay out sequences themselves); decoding joins words with single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.errors import DataFormatError

SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "unk": "<unk>",
    "image": "<image>",
}
_TOKENIZER_FILE = "tokenizer.json"


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        extra_special_tokens=[SPECIAL_TOKENS["image"]],
        # The default clean-up would glue punctuation back onto words ("a dog ." -> "a dog.").
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def train_word_tokenizer(texts: Iterable[str], out_dir: Path, *, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train on `texts` (the training split's text only), save to `out_dir`, return the tokenizer."""
    core = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk"]))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # Listing the special tokens first gives them ids 0..4 in this order.
    trainer = trainers.WordLevelTrainer(
        min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = _wrap(core)
    _check_special_ids(tokenizer, Path(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _check_special_ids(tokenizer: PreTrainedTokenizerBase, where: Path) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS.values()):
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected:
            raise DataFormatError(
                f"tokenizer in {where} maps {token} to id {actual}, expected {expected}; "
                f"rebuild it with train_word_tokenizer (re-run the prepare stage)"
            )


def load_word_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    out_dir = Path(out_dir)
    if not (out_dir / _TOKENIZER_FILE).is_file():
        raise DataFormatError(
            f"no tokenizer in {out_dir} ({_TOKENIZER_FILE} missing); run the prepare stage "
            f"(`dvc repro prepare`) or train_word_tokenizer to create it"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    if not isinstance(tokenizer, PreTrainedTokenizerFast):  # tokenizer.json loads as a fast tokenizer
        raise DataFormatError(f"tokenizer in {out_dir} is not a fast tokenizer; rebuild it with train_word_tokenizer")
    _check_special_ids(tokenizer, out_dir)
    return tokenizer
