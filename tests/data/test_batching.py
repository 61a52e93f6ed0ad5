import torch

from pipeline.config import PromptConfig
from pipeline.data.datasets import IGNORE_INDEX, collate_for_training, collate_prompts
from pipeline.data.prompts import TokenLayoutBuilder


class WordTokenizer:
    """Just enough of a tokenizer for the prompt builder: one id per known word."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


def test_prompt_layout_is_bos_images_prompt_and_target_ends_with_eos():
    builder = TokenLayoutBuilder(WordTokenizer(), PromptConfig(), image_token_id=4, num_image_tokens=3)
    prompt = builder.prompt_ids("vqa", "what colour ?")
    assert prompt[:4] == [1, 4, 4, 4]
    assert len(prompt) == 4 + len(["question", ":", "what", "colour", "?", "answer", ":"])
    target = builder.target_ids("red")
    assert target[-1] == 2 and len(target) == 2
    assert not builder.encoder_decoder


def test_blip2_layouts_put_the_image_tokens_first_and_t5_ends_its_encoder_prompt_with_eos():
    tokenizer = WordTokenizer()
    words = tokenizer.encode("caption :")
    opt = TokenLayoutBuilder(tokenizer, PromptConfig(), 4, 2, layout="blip2-opt")
    assert opt.prompt_ids("caption") == [4, 4, 1, *words]  # as Blip2Processor: queries, then the tokenizer's <bos>
    t5 = TokenLayoutBuilder(tokenizer, PromptConfig(), 4, 2, layout="blip2-t5", decoder_start_id=0)
    assert t5.prompt_ids("caption") == [4, 4, *words, 2]  # T5's tokenizer appends </s>, adds no <bos>
    assert t5.encoder_decoder and t5.decoder_start_id == 0


def test_encoder_decoder_batches_put_the_prompt_in_the_encoder_and_start_the_decoder():
    items = [
        {"prompt": [4, 10, 2], "target": [20, 2], "pixel_values": torch.zeros(3, 2, 2)},
        {"prompt": [4, 11, 12, 2], "target": [21, 22, 2], "pixel_values": torch.ones(3, 2, 2)},
    ]
    batch = collate_for_training(items, pad_id=0, decoder_start_id=0)
    assert batch["encoder_input_ids"].tolist() == [[4, 10, 2, 0], [4, 11, 12, 2]]
    assert batch["encoder_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"].tolist() == [[0, 20, 2, 0], [0, 21, 22, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 20, 2, IGNORE_INDEX], [IGNORE_INDEX, 21, 22, 2]]


def test_training_labels_cover_only_target_tokens():
    items = [
        {"prompt": [1, 4, 10], "target": [20, 2], "pixel_values": torch.zeros(3, 2, 2)},
        {"prompt": [1, 4, 11, 12], "target": [21, 22, 2], "pixel_values": torch.ones(3, 2, 2)},
    ]
    batch = collate_for_training(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 4, 10, 20, 2, 0, 0], [1, 4, 11, 12, 21, 22, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] * 3 + [20, 2] + [IGNORE_INDEX] * 2,
        [IGNORE_INDEX] * 4 + [21, 22, 2],
    ]
    assert batch["pixel_values"].shape == (2, 3, 2, 2)


def test_generation_prompts_are_left_padded():
    items = [
        {"prompt": [1, 4], "pixel_values": torch.zeros(3, 2, 2)},
        {"prompt": [1, 4, 9], "pixel_values": torch.zeros(3, 2, 2)},
    ]
    batch = collate_prompts(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 1, 4], [1, 4, 9]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
