"""Tiny checkpoint directories in the layout of the hub repositories the users bring (`llava-hf/llava-1.5-7b-hf`,
`Salesforce/blip2-opt-2.7b`, `Salesforce/blip2-flan-t5-xl`), written with `save_pretrained`: model config and
weights, the processor (image processor config, tokenizer files, `processor_config.json`) and, for LLaVA-1.5, its
chat template. Tokenizers are word-level stand-ins of the real classes (nothing can be downloaded here) with the
real special-token conventions: Llama and OPT prepend their BOS, T5 appends </s>."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Blip2Processor,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    GPT2TokenizerFast,
    LlamaTokenizerFast,
    LlavaProcessor,
    T5TokenizerFast,
)

from pipeline.models.tiny_blip2 import build_tiny_blip2, tiny_blip2_config
from pipeline.models.tiny_llava import build_tiny_llava, tiny_llava_config
from tests.conftest import TINY

# llava-hf/llava-1.5-7b-hf's chat template: "USER: <image>\n<text> ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
TEXTS = [
    "a red circle in the center .",
    "question : what colour is the square ? answer : blue",
    "caption : a blue square on the left of a green star .",
] * 4
# Llama's word-level stand-in knows the words of these texts and of the chat template
WORDS = sorted({word for text in [*TEXTS, "caption describe USER ASSISTANT"] for word in text.split()})


def _word_level(specials: list[str], template: str) -> Tokenizer:
    """Llama's stand-in: one id per word, <s> prepended (as LlamaTokenizer's post-processor does)."""
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template]
    )
    return core


def _byte_level_bpe(specials: list[str], template: str) -> Tokenizer:
    """OPT's (GPT-2's) kind: byte-level BPE."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core.train_from_iterator(
        TEXTS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet, show_progress=False),
    )
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, core.token_to_id(t)) for t in specials if t in template]
    )
    return core


def _unigram(specials: list[str], template: str) -> Tokenizer:
    """T5's kind: a SentencePiece-style unigram model over Metaspace pieces."""
    core = Tokenizer(models.Unigram())
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(
        TEXTS, trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>", show_progress=False)
    )
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, core.token_to_id(t)) for t in specials if t in template]
    )
    return core


def write_llava_checkpoint(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=_word_level(specials, "<s> $A"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY.image_size}, crop_size={"height": TINY.image_size, "width": TINY.image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" drops again
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = tiny_llava_config(
        TINY,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    build_tiny_llava(config, seed=0).to(dtype).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_blip2_checkpoint(path: Path, language: str, dtype: torch.dtype = torch.float32) -> Path:
    cfg = TINY.model_copy(update={"num_query_tokens": 4})
    if language == "opt":  # OPT's GPT-2 tokenizer: </s> is also its BOS, prepended to every text
        specials = ["<unk>", "<pad>", "</s>", "<image>"]
        tokenizer = GPT2TokenizerFast(
            tokenizer_object=_byte_level_bpe(specials, "</s> $A"),
            bos_token="</s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
        )
    else:  # T5's tokenizer: <pad> = 0 starts the decoder, </s> = 1 ends every text
        specials = ["<pad>", "</s>", "<unk>", "<image>"]
        tokenizer = T5TokenizerFast(
            tokenizer_object=_unigram(specials, "$A </s>"),
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            extra_ids=0,
        )
    image_processor = BlipImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)
    config = tiny_blip2_config(
        cfg,
        language,  # type: ignore[arg-type]
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if language == "opt" else tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    build_tiny_blip2(config, seed=0).to(dtype).save_pretrained(path)
    processor.save_pretrained(path)
    return path
