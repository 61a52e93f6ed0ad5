"""Captioning many image files with one method, in batches: one record per image, the unreadable ones reported by
name and skipped without losing the others' results (the caption command's batch mode)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.data.images import load_image
from pipeline.errors import ImageError, PipelineError
from pipeline.evaluation.speed import BatchMethod

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class CaptionRecord:
    image: str
    caption: str | None = None
    tokens: list[str] | None = None
    new_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    acceptance_rate: float | None = None  # accepted / drafted (None: the method drafts nothing)
    error: str | None = None  # why the image was skipped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files to caption: each path given, and the images of each directory given (sorted by name)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise PipelineError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        else:
            files.append(path)  # a missing or broken file is reported per image, not here
    return files


def caption_files(
    files: Sequence[Path],
    method: BatchMethod,
    prompt_ids: list[int],
    image_processor: Any,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
) -> list[CaptionRecord]:
    """One record per file, in order: the method's caption of each readable image, decoded `batch_size` at a time,
    and an error record for each unreadable one."""
    records = [CaptionRecord(str(path)) for path in files]
    readable: list[tuple[int, torch.Tensor]] = []
    for index, path in enumerate(files):
        try:
            image = load_image(path)
        except ImageError as exc:
            records[index].error = str(exc)
            continue
        pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"]
        readable.append((index, pixels.to(device, dtype)))
    ids = torch.tensor([prompt_ids], device=device)
    bar = tqdm(total=len(readable), desc="captioning", unit="image", disable=not progress)
    for start in range(0, len(readable), batch_size):
        chunk = readable[start : start + batch_size]
        prompts = [
            {"task": "caption", "input_ids": ids, "pixel_values": pixels, "max_new_tokens": max_new_tokens}
            for _, pixels in chunk
        ]
        for (index, _), (tokens, stats) in zip(chunk, method(prompts), strict=True):
            record = records[index]
            record.caption = str(tokenizer.decode(tokens, skip_special_tokens=True)).strip()
            record.tokens = tokenizer.convert_ids_to_tokens(tokens)
            record.new_tokens = len(tokens)
            if stats is not None and stats.verify_calls:
                record.drafted, record.accepted = stats.drafted, stats.accepted
                record.acceptance_rate = stats.acceptance_rate
        bar.update(len(chunk))
    bar.close()
    return records
