"""select_layer's and evaluate's work on the tiny data, shared out over a trainer's processes: what the sharding test
computes once in one process (in pytest) and once over two (through `ddp_script`), to compare."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.config import GrowingScheduleConfig, LayerChoiceConfig, PromptConfig, TrainerConfig
from pipeline.evaluation import methods
from pipeline.evaluation.comparison import score_methods
from pipeline.evaluation.layer_choice import choose_draft_layers
from pipeline.evaluation.method_runner import DecodingResources, batch_runnables, runnables
from pipeline.evaluation.prompts import caption_prompts, vqa_prompts
from pipeline.evaluation.sharded import decode_sharded
from pipeline.evaluation.speed import time_methods
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from tests.conftest import TINY, tiny_backbone

# what timing decides (and so differs between runs); everything else must be the same numbers at any process count
SPEED_FIELDS = {
    "speedup",
    "tokens_per_second",
    "ms_per_token",
    "speedup_by_task",
    "speedup_by_repeat",
    "throughput_tokens_per_second",  # each process's wall time
}


def layer_choice(splits: dict, tokenizer: Any, cfg: LayerChoiceConfig) -> dict | None:
    choice = choose_draft_layers(cfg, tiny_backbone(tokenizer), splits["val"], PromptConfig())
    return None if choice is None else choice.to_dict()


def method_rows(splits: dict, tokenizer: Any, trainer: TrainerConfig) -> dict[str, dict] | None:
    """Every method's row (speed fields dropped) over the tiny test prompts, decoded over `trainer`'s processes."""
    backbone = tiny_backbone(tokenizer)
    builder = backbone.prompt_builder(PromptConfig())
    test = splits["test"]
    prompts = caption_prompts(test, builder, backbone.image_processor, 4, 2) + vqa_prompts(
        test, builder, backbone.image_processor, 4
    )
    for prompt in prompts:  # short outputs keep the test quick; the budget is the same in both runs
        prompt["max_new_tokens"] = 6
    torch.manual_seed(1)
    network = ImitationNetwork(TINY.hidden_size)
    for parameter in network.parameters():  # a head that drafts differently from the early exit
        torch.nn.init.normal_(parameter, std=0.2)
    specs = [
        methods.autoregressive(),
        methods.draft_only(None, 1),
        methods.draft_only("head", 1),
        methods.ssd("head", 1, 2),
        methods.ssd(None, 2, 3),
    ]
    resources = DecodingResources(
        {methods.FINETUNED: backbone.model.eval()},
        {"head": as_draft_head(network.eval())},
        backbone.tokenizer.eos_token_id,
        GrowingScheduleConfig(),
        pad_token_id=backbone.tokenizer.pad_token_id,
    )
    device = torch.device("cpu")
    runs = decode_sharded(batch_runnables(specs, resources), prompts, 3, trainer, device=device)
    if runs is None:
        return None
    speed = prompts[:2]  # timed in this one process, as evaluate's rank zero does
    timings = time_methods(runnables(specs, resources), speed, repeats=1)
    rows = score_methods(runs, prompts, timings, speed, backbone.tokenizer, reference=methods.autoregressive().key)
    return {key: {k: v for k, v in row.items() if k not in SPEED_FIELDS} for key, row in rows.items()}
