"""The frozen backbone's states and distributions, computed once for the draft trainers (as EAGLE precomputes its
target's hidden states).

An imitation network on a frozen backbone sees only (a) the layer-`n` outputs it maps, (b) the deep layers' outputs
its cosine target is fused from and (c) the full model's distribution its KD term matches. Those never change while
it trains, so the `features` stage runs the backbone once over a sample of the training split (and a validation
slice) and stores them here; every frozen head, NAS trial and sweep head then trains for many epochs at the cost of
the imitation network alone.

Layout of one split's folder (numpy `.npy` files, read memory-mapped):
- `labels.npy` int32 [tokens]: every example's decoder sequence back to back (its `labels`, IGNORE_INDEX off target);
- `layer_<n>.npy` [tokens, H]: the output of decoder layer n for every position (the attention variant of the
  imitation network attends over the whole sequence, image and prompt included);
- `deep.npy` [scored, k, H]: the last k layers' outputs, only at *scored* positions (t whose next token is a target);
- `teacher_logp.npy` float32 [scored, top_k], `teacher_ids.npy` int32 [scored, top_k]: the full model's top-k
  log-probabilities at the distillation temperature (log-softmax over the whole vocabulary, so the kept entries are
  exact; the tail's mass is what KD from the cache drops), best first;
- `index.json`: sizes, per-example lengths and scored counts, the layout.
bfloat16 is stored as its 16 raw bits (numpy has no bfloat16) and viewed back on load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.data.datasets import IGNORE_INDEX, ExampleDataset, collate_for_training
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example, SplitData
from pipeline.data.prompts import TASKS, PromptBuilder
from pipeline.errors import PipelineError
from pipeline.io import atomic_directory
from pipeline.models.adapters import BackboneAdapter

INDEX_FILE = "index.json"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class FeatureLayout:
    draft_layers: tuple[int, ...]  # the n's whose layer outputs are stored
    deep_layers: int  # k: how many of the last layers' outputs are stored (the fusion's inputs)
    top_k: int  # teacher entries kept per scored position
    temperature: float  # of the stored teacher log-probabilities (the KD term's)
    dtype: str  # storage dtype of the hidden states


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions t whose next token labels[t + 1] is scored (the positions every draft loss averages
    over; the last position never is)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


class _Writer:
    """Appends chunks per array to temporary files, then writes each array as one `.npy`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.chunks: dict[str, list[np.ndarray]] = {}
        self.pending: dict[str, int] = {}  # bytes held in `chunks` per array
        self.parts: dict[str, list[Path]] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        array = _to_numpy(tensor)
        self.chunks.setdefault(name, []).append(array)
        self.pending[name] = self.pending.get(name, 0) + array.nbytes
        if self.pending[name] > 64 << 20:
            self._spill(name)

    def _spill(self, name: str) -> None:
        part = self.folder / f".{name}.{len(self.parts.get(name, []))}.npy"
        np.save(part, np.concatenate(self.chunks.pop(name)))
        self.pending[name] = 0
        self.parts.setdefault(name, []).append(part)

    def finish(self) -> None:
        for name in list(self.chunks):
            self._spill(name)
        for name, parts in self.parts.items():
            arrays = [np.load(p, mmap_mode="r") for p in parts]
            rows = sum(a.shape[0] for a in arrays)
            out = np.lib.format.open_memmap(
                self.folder / f"{name}.npy", mode="w+", dtype=arrays[0].dtype, shape=(rows, *arrays[0].shape[1:])
            )
            start = 0
            for array in arrays:
                out[start : start + array.shape[0]] = array
                start += array.shape[0]
            out.flush()
            del out, arrays
            for p in parts:
                p.unlink()


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


@torch.no_grad()
def write_feature_cache(
    adapter: BackboneAdapter,
    batches: Iterable[Mapping[str, torch.Tensor]],
    layout: FeatureLayout,
    out_dir: Path,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the backbone over `batches` (collated training batches) and store the layout's states in `out_dir`,
    replacing it atomically. Returns the index."""
    if layout.dtype not in STORAGE_DTYPES:
        raise PipelineError(f"features.dtype {layout.dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    bad = [n for n in layout.draft_layers if not 1 <= n < adapter.num_layers]
    if bad:
        raise PipelineError(f"features: draft layers {bad} are outside 1..{adapter.num_layers - 1}")
    store = STORAGE_DTYPES[layout.dtype]
    lengths: list[int] = []
    scored_counts: list[int] = []
    k = min(layout.deep_layers, adapter.num_layers)
    vocab = 0
    with atomic_directory(out_dir) as tmp:
        writer = _Writer(tmp)
        for batch in batches:
            mask = batch["attention_mask"].bool()
            param = next(adapter.model.parameters())
            batch = {
                k: v.to(param.device, dtype=param.dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()
            }
            embeds, encoder = adapter.batch_prefix(batch)
            device = embeds.device
            _, states = adapter.run_layers(
                embeds,
                0,
                adapter.num_layers,
                attention_mask=batch["attention_mask"].to(device),
                collect_hidden=True,
                encoder=encoder,
            )
            labels = batch["labels"]
            scored = scored_positions(labels) & mask
            logits = adapter.logits(states[-1]).float()
            vocab = logits.shape[-1]
            top_k = min(layout.top_k, vocab) if layout.top_k > 0 else vocab
            for row in range(labels.shape[0]):
                length = int(mask[row].sum())
                keep = scored[row, :length].to(device)
                lengths.append(length)
                scored_counts.append(int(keep.sum()))
                writer.add("labels", labels[row, :length].to(torch.int32))
                for n in layout.draft_layers:
                    writer.add(f"layer_{n}", states[n - 1][row, :length].to(store))
                deep = torch.stack([s[row, :length][keep] for s in states[-k:]], dim=1)  # [scored, k, H]
                writer.add("deep", deep.to(store))
                logp = F.log_softmax(logits[row, :length][keep] / layout.temperature, dim=-1)
                values, ids = logp.topk(top_k, dim=-1)
                writer.add("teacher_logp", values)
                writer.add("teacher_ids", ids.to(torch.int32))
        if not lengths:
            raise PipelineError("features: no examples to cache")
        writer.finish()
        index = {
            "format": FORMAT_VERSION,
            "layout": {**asdict(layout), "draft_layers": list(layout.draft_layers), "deep_layers": k},
            "hidden_size": adapter.hidden_size,
            "vocab_size": vocab,
            "examples": len(lengths),
            "tokens": sum(lengths),
            "scored": sum(scored_counts),
            "lengths": lengths,
            "scored_counts": scored_counts,
            **dict(extra or {}),
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index))
    return index


class CachedFeatures(torch.utils.data.Dataset):
    """One split's cache, memory-mapped: item i is example i's stored tensors (hidden states in `dtype`)."""

    def __init__(self, folder: str | Path, draft_layers: int, dtype: torch.dtype = torch.float32) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX_FILE
        if not index_path.is_file():
            raise PipelineError(
                f"feature cache {self.folder} has no {INDEX_FILE}: run the `features` stage (dvc repro features)"
            )
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise PipelineError(
                f"feature cache {index_path} is corrupt ({error}): run the `features` stage again"
            ) from None
        if self.index.get("format") != FORMAT_VERSION:
            raise PipelineError(
                f"feature cache {self.folder} has format {self.index.get('format')}, this code reads "
                f"{FORMAT_VERSION}: run the `features` stage again"
            )
        layout = self.index["layout"]
        if draft_layers not in layout["draft_layers"]:
            raise PipelineError(
                f"feature cache {self.folder} holds layers {layout['draft_layers']}, not n = {draft_layers}: "
                "it caches select_layer's n and the sweep's draft_layers: run it again (dvc repro features)"
            )
        self.layout = layout
        self.dtype = dtype
        self.bfloat16 = layout["dtype"] == "bfloat16"
        names = {
            "labels": "labels",
            "layer": f"layer_{draft_layers}",
            "deep": "deep",
            "logp": "teacher_logp",
            "ids": "teacher_ids",
        }
        self.arrays: dict[str, np.ndarray] = {}
        for key, name in names.items():
            path = self.folder / f"{name}.npy"
            try:
                self.arrays[key] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise PipelineError(
                    f"feature cache file {path} is missing or corrupt ({error}): run the `features` stage again"
                ) from None
        lengths, scored = np.asarray(self.index["lengths"]), np.asarray(self.index["scored_counts"])
        if self.arrays["labels"].shape[0] != lengths.sum() or self.arrays["deep"].shape[0] != scored.sum():
            raise PipelineError(
                f"feature cache {self.folder} does not match its {INDEX_FILE}: run the `features` stage again"
            )
        self.tasks: list[str] = self.index.get("tasks") or ["caption"] * len(lengths)
        if len(self.tasks) != len(lengths):
            raise PipelineError(
                f"feature cache {self.folder} does not match its {INDEX_FILE}: run the `features` stage again"
            )
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.scored_starts = np.concatenate([[0], np.cumsum(scored)])

    def __len__(self) -> int:
        return int(self.index["examples"])

    def _states(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(array))
        return (tensor.view(torch.bfloat16) if self.bfloat16 else tensor).to(self.dtype)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a, b = self.starts[i], self.starts[i + 1]
        c, d = self.scored_starts[i], self.scored_starts[i + 1]
        return {
            "labels": torch.from_numpy(np.array(self.arrays["labels"][a:b])).long(),
            "hidden": self._states(self.arrays["layer"][a:b]),
            "deep": self._states(self.arrays["deep"][c:d]),
            "teacher_logp": torch.from_numpy(np.array(self.arrays["logp"][c:d])),
            "teacher_ids": torch.from_numpy(np.array(self.arrays["ids"][c:d])).long(),
        }


def collate_cached(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-padded [B, T, H] states and [B, T] labels (IGNORE_INDEX on padding); the scored positions' tensors
    concatenated in row-major order, which is the order `scored_positions(labels)` selects them in."""
    width = max(item["labels"].shape[0] for item in items)
    hidden_size = items[0]["hidden"].shape[-1]
    hidden = items[0]["hidden"].new_zeros((len(items), width, hidden_size))
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        length = item["labels"].shape[0]
        hidden[row, :length] = item["hidden"]
        labels[row, :length] = item["labels"]
    return {
        "hidden": hidden,
        "labels": labels,
        **{key: torch.cat([item[key] for item in items]) for key in ("deep", "teacher_logp", "teacher_ids")},
    }


def bytes_per_token(hidden_size: int, dtype: str) -> int:
    """Disk per cached position and stored layer (the README's sizing rule)."""
    return hidden_size * STORAGE_DTYPES[dtype].itemsize


def cached_examples(split: SplitData, weights: Mapping[str, float], count: int | None, seed: int) -> list[Example]:
    """`count` examples of `split` (all: None), tasks in proportion to `weights` (the trainer's task weights), drawn
    with `seed`: the examples a cached head trains on, fixed once."""
    by_task = {task: split.examples(task) for task in TASKS if weights.get(task, 0) > 0}
    if count is None:
        return [e for examples in by_task.values() for e in examples]
    total = sum(weights[task] for task in by_task)
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Example] = []
    for task, examples in by_task.items():
        take = min(len(examples), round(count * weights[task] / total))
        order = torch.randperm(len(examples), generator=generator)[:take].tolist()
        chosen += [examples[i] for i in sorted(order)]
    return chosen


def split_pixels(split: SplitData, image_processor: Any) -> PixelStore:
    """The images of `split` in the order its examples index them: what `cache_splits` reads pixels from."""
    return PixelStore([record.image_path for record in split.images], image_processor)


def cache_splits(
    adapter: BackboneAdapter,
    builder: PromptBuilder,
    splits: Mapping[str, tuple[PixelStore, list[Example]]],
    layout: FeatureLayout,
    out_dir: Path,
    batch_size: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cache each named split's chosen examples (with the split's images, `split_pixels(split, ...)`) into
    `out_dir/<name>`; `out_dir` is replaced only once all are written. Returns each split's index without its
    per-example lists."""
    summary: dict[str, dict[str, Any]] = {}
    with atomic_directory(out_dir) as staging:
        for name, (pixels, examples) in splits.items():
            dataset = ExampleDataset(examples, pixels, builder)
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                collate_fn=lambda items: collate_for_training(
                    items, builder.tokenizer.pad_token_id, builder.decoder_start_id
                ),
            )
            batches = tqdm(loader, desc=f"features {name}", unit="batch", leave=False)
            tasks = {"tasks": [e.task for e in examples]}  # the trainer batches by task, as end to end
            index = write_feature_cache(adapter, batches, layout, staging / name, {**(extra or {}), **tasks})
            summary[name] = {k: v for k, v in index.items() if k not in ("lengths", "scored_counts", "tasks")}
    return summary
