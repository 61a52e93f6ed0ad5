"""The one set of shared fixtures: tiny random-init models of the real Hugging Face classes, a tiny prepared data set
and tokenizer, and a tiny repository with a saved backbone (what the stages read)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import ModelConfig, TinyBackboneConfig, parse_params
from pipeline.data.prepared import MANIFEST, load_prepared
from pipeline.data.synthetic import generate_synthetic_dataset, instances_file_name
from pipeline.data.tokenizer import train_word_tokenizer
from pipeline.io import atomic_write_json
from pipeline.models.loading import Backbone, build_backbone, save_backbone
from pipeline.models.tiny_llava import build_tiny_llava, tiny_llava_config
from pipeline.training.feature_cache import CachedFeatures

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TOKEN_ID = 4
VOCAB = 64
EOS = 2

# The whole-pipeline modules, longest first: collected first, they start first, one per pytest-xdist process
# (`make test`: --dist loadfile --no-loadscope-reorder keeps this order), and the short modules fill in around them
# instead of one of them starting last and running alone
LONGEST_MODULES = ("tests/stages/test_dvc_repro.py", "tests/stages/test_dvc_exp_run.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0]
        return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: every module keeps its own test order


# The tiny VLM every test builds: a real LlavaForConditionalGeneration (CLIP tower + Llama decoder), 16×16 images of
# 4 patches, GQA (4 query heads, 2 key/value heads)
TINY = TinyBackboneConfig(
    num_layers=4,
    hidden_size=32,
    intermediate_size=64,
    num_heads=4,
    num_kv_heads=2,
    vision_layers=1,
    vision_hidden_size=32,
    vision_intermediate_size=64,
    vision_heads=2,
    patch_size=8,
    image_size=16,
)


TINY_PRESETS = ["tiny-llava", "tiny-blip2-opt", "tiny-blip2-t5"]


def tiny_backbone(tokenizer: Any, preset: str = "tiny-llava", **sizes: Any) -> Backbone:
    """A TINY backbone of `preset` (sizes overridden, e.g. num_layers=2) for a word tokenizer, seeded: what training
    tests train."""
    return build_backbone(ModelConfig(preset=preset, tiny=TINY.model_copy(update=sizes)), tokenizer, seed=0)


@pytest.fixture
def one_thread():
    """One intra-op thread: fastest for tiny models, and immune to a second spinning OpenMP thread stalling
    every small op when other processes load the machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_tiny_llava(
    text_model: str = "llama", *, num_layers: int = 4, num_kv_heads: int = 2, dtype: torch.dtype = torch.float32
):
    """TINY with a `text_model` decoder (llama, mistral, qwen2), for a 64-token vocabulary with <image> = 4."""
    cfg = TINY.model_copy(update={"text_model": text_model, "num_layers": num_layers, "num_kv_heads": num_kv_heads})
    config = tiny_llava_config(
        cfg, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=EOS, image_token_id=IMAGE_TOKEN_ID
    )
    return build_tiny_llava(config, seed=0).to(dtype).eval()


def make_tiny_blip2(language: str = "opt", *, num_layers: int = 4, dtype: torch.dtype = torch.float32):
    """TINY as BLIP-2 with an OPT decoder or a T5 encoder–decoder (FlanT5's layout), 4 query tokens = the 4 image
    tokens of `make_vlm_inputs`, for a 64-token vocabulary with <image> = 4 (T5's decoder starts from <pad> = 0)."""
    from pipeline.models.tiny_blip2 import build_tiny_blip2, tiny_blip2_config

    cfg = TINY.model_copy(update={"num_layers": num_layers, "num_query_tokens": 4})
    config = tiny_blip2_config(
        cfg, language, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=EOS, image_token_id=IMAGE_TOKEN_ID
    )
    model = build_tiny_blip2(config, seed=0)
    if language == "t5":
        # T5 initialises its blocks small: untrained, the residual stream is little more than the input token's
        # embedding, and greedy decoding repeats one token forever. Larger block weights give a varied sequence,
        # which the losslessness tests need (an EOS that first appears mid-way).
        with torch.no_grad():
            for name, parameter in model.language_model.decoder.named_parameters():
                if "layer_norm" not in name:
                    parameter.mul_(5.0)
    return model.to(dtype).eval()


def make_vlm_inputs(batch: int = 2, text_len: int = 5, seed: int = 0, dtype: torch.dtype = torch.float32):
    """input_ids = <bos> <image>x4 text...; pixel values for 16x16 images (4 patches of 8x8)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(5, VOCAB, (batch, text_len), generator=g)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, 4), IMAGE_TOKEN_ID), text], dim=1)
    pixels = torch.randn(batch, 3, TINY.image_size, TINY.image_size, generator=g).to(dtype)
    return ids, pixels


def make_causal_lm(arch: str = "llama", *, num_layers: int = 4, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A text-only decoder of TINY's sizes: llama (GQA), mistral, qwen2, or opt (with in/out projections)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": EOS,
        "tie_word_embeddings": False,
    }
    rope = {
        "hidden_size": TINY.hidden_size,
        "intermediate_size": TINY.intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": TINY.num_heads,
        "num_key_value_heads": TINY.num_kv_heads,
        "max_position_embeddings": 256,
    }
    if arch == "llama":
        model_class, config = LlamaForCausalLM, LlamaConfig(**rope, **common)
    elif arch == "mistral":
        model_class, config = MistralForCausalLM, MistralConfig(**rope, sliding_window=None, **common)
    elif arch == "qwen2":
        model_class, config = Qwen2ForCausalLM, Qwen2Config(**rope, **common)
    elif arch == "opt":
        model_class = OPTForCausalLM
        config = OPTConfig(
            hidden_size=TINY.hidden_size,
            ffn_dim=TINY.intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=TINY.num_heads,
            word_embed_proj_dim=16,
            max_position_embeddings=256,
            dropout=0.0,
            **common,
        )
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = model_class(config).to(dtype).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = 0
    return model


def make_text_prompt(length: int = 6, seed: int = 0) -> torch.LongTensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(1, 1, dtype=torch.long), torch.randint(5, VOCAB, (1, length - 1), generator=g)], dim=1)


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def text_model(request) -> str:
    return request.param


def write_tiny_dataset(root: Path) -> tuple[dict, Any]:
    """A prepared synthetic data set (24 train, 8 val, 4 test images) and its word tokenizer, under `root`."""
    generate_synthetic_dataset(root, n_train=24, n_val=8, n_test=4, seed=0)
    atomic_write_json(
        root / MANIFEST,
        {
            "karpathy_json": "dataset_coco.json",
            "image_root": "images",
            "descriptions_json": "descriptions.json",
            "vqa": [],
            "instances": {split: instances_file_name(split) for split in ("train", "val", "test")},
            "tokenizer_dir": "tok",
        },
    )
    splits = load_prepared(root)
    texts = [c for s in splits.values() for r in s.images for c in r.captions] + ["caption :", "describe :"]
    texts += [d for s in splits.values() for d in s.descriptions.values()]
    return splits, train_word_tokenizer(texts, root / "tok")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(splits, tokenizer) of a tiny prepared data set."""
    return write_tiny_dataset(tmp_path_factory.mktemp("data"))


TINY_PARAMS: dict[str, Any] = {
    "model": {"tiny": TINY.model_dump()},
    "imitation": {
        "max_steps": 4,
        "batch_size": 8,
        "val_every_steps": 2,
        "val_batches": 1,
        "val_decode_prompts": 1,
        "optimizer": {"warmup_steps": 1},
        "variants": ["ce"],
        "mixed": {"max_steps": 4},
    },
    "features": {"train_examples": 48, "val_examples": 8, "batch_size": 8},
    "ray": {"num_cpus": 2, "max_failures": 1, "cluster_gpus_per_trial": 0},  # the loopback head has no GPU
    "nas": {"num_samples": 2, "max_steps": 4, "report_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1},
    "sweep": {"train_steps": 4, "captions": 2, "descriptions": 1},
    "decoding": {"growing": {"d_min": 1, "d_max": 3, "step": 4}},
}
NAS_SPACE = "space:\n  num_linear: {choice: [1, 2]}\n  activation: {choice: [gelu, relu]}\n"
SWEEP_SPACE = "space:\n  draft_layers: {grid: [1, 2]}\n  loss: {grid: [ce]}\n  draft_len: {grid: [2, growing]}\n"


def tiny_params(**overrides: dict[str, Any]):
    """TINY_PARAMS with sections updated, validated."""
    raw = json.loads(json.dumps(TINY_PARAMS))
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """A tiny repository as the search stages and the caption command read it: prepared data, a saved tiny backbone,
    a layer choice (n = 1), small search spaces."""
    root = tmp_path_factory.mktemp("repo")
    (root / "dvc.yaml").write_text("stages: {}\n")  # marks the repository root (tracking.repo_root)
    _, tokenizer = write_tiny_dataset(root / "data/prepared")
    save_backbone(tiny_backbone(tokenizer), root / "models/finetuned")
    (root / "metrics").mkdir()
    (root / "metrics/layer_choice.json").write_text(json.dumps({"chosen_n": 1}))
    spaces = root / "experiments/search_spaces"
    spaces.mkdir(parents=True)
    (spaces / "nas.yaml").write_text(NAS_SPACE)
    (spaces / "sweep.yaml").write_text(SWEEP_SPACE)
    _run_in(root, "stages.features")  # the cache the search trials train their heads from
    return root


def _run_in(root: Path, stage: str) -> None:
    """Run a stage's main with `root` as the working directory (stages use repository-relative paths)."""
    import importlib

    previous = Path.cwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
            importlib.import_module(stage).main(tiny_params())
    finally:
        os.chdir(previous)


def teacher_top1_agreement(folder: Any, draft_layers: int) -> float:
    """Share of a feature cache's scored positions whose next label is the teacher's top-1 token: 1 when the cached
    text is the full model's own greedy output."""
    cache = CachedFeatures(folder, draft_layers)
    agree = total = 0
    for i in range(len(cache)):
        item = cache[i]
        labels = item["labels"]
        targets = labels[1:][labels[1:] != -100]  # row-major, the order the scored positions are stored in
        agree += int((item["teacher_ids"][:, 0] == targets).sum())
        total += targets.numel()
    return agree / total
