"""Typed, strict configuration built from `params.yaml`.

Every stage validates the whole file once at start: unknown keys and invalid values are
collected into a single `ConfigError` that lists every bad field, so a user fixes them all
in one go instead of meeting them one stage at a time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError


class StrictModel(BaseModel):
    # extra="forbid" turns a typo in params.yaml into an error instead of a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_sections_keep_their_defaults(cls, data: Any) -> Any:
        """A partial nested section (`imitation: {optimizer: {lr: 0.01}}`) overrides only the keys it names: the others
        keep *this* section's defaults (imitation's weight decay 0), not those of the nested type (0.01)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, field in cls.model_fields.items():
            given, default = data.get(name), field.default
            if isinstance(given, dict) and isinstance(default, BaseModel):
                merged[name] = {**default.model_dump(), **given}
        return merged


class SyntheticDataConfig(StrictModel):
    n_train: int = Field(6000, ge=1)
    n_val: int = Field(500, ge=1)
    n_test: int = Field(500, ge=1)
    image_size: int = Field(64, ge=32, le=1024)
    min_objects: int = Field(1, ge=1, le=9)
    max_objects: int = Field(4, ge=1, le=9)
    questions_per_image: int = Field(3, ge=3)

    @model_validator(mode="after")
    def _objects_range(self) -> SyntheticDataConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        return self


class PromptConfig(StrictModel):
    """Text that follows the image tokens, per task. `{question}` is filled in for VQA."""

    caption: str = "caption :"
    description: str = "describe :"
    vqa: str = "question : {question} answer :"

    @model_validator(mode="after")
    def _vqa_has_question(self) -> PromptConfig:
        if "{question}" not in self.vqa:
            raise ValueError("prompts.vqa must contain the placeholder {question}")
        return self


class DataConfig(StrictModel):
    # "synthetic": prepare generates the data set; "files": prepare reads real data from the paths below.
    source: Literal["synthetic", "files"] = "synthetic"
    out_dir: str = "data/prepared"
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    karpathy_json: str | None = None
    image_root: str | None = None
    vqa_dir: str | None = None
    descriptions_json: str | None = None
    tokenizer_min_frequency: int = Field(1, ge=1)
    prompts: PromptConfig = PromptConfig()

    @model_validator(mode="after")
    def _files_need_paths(self) -> DataConfig:
        if self.source == "files":
            missing = [k for k in ("karpathy_json", "image_root") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"source 'files' needs {', '.join(missing)} (paths to the real data)")
        return self


class TinyBackboneConfig(StrictModel):
    """Sizes of the presets trained from scratch: `tiny-llava` (a real `LlavaForConditionalGeneration`),
    `tiny-blip2-opt` and `tiny-blip2-t5` (a real `Blip2ForConditionalGeneration` with an OPT decoder or a T5
    encoder–decoder). The language model's sizes are shared; `num_layers` counts its decoder layers."""

    text_model: Literal["llama", "mistral", "qwen2"] = "llama"  # tiny-llava's language model
    num_layers: int = Field(12, ge=2)
    hidden_size: int = Field(256, ge=16)
    intermediate_size: int = Field(688, ge=16)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(4, ge=1)
    max_positions: int = Field(512, ge=64)
    vision_layers: int = Field(2, ge=1)
    vision_hidden_size: int = Field(128, ge=16)
    vision_intermediate_size: int = Field(256, ge=16)
    vision_heads: int = Field(4, ge=1)
    patch_size: int = Field(32, ge=2)
    image_size: int = Field(96, ge=8)
    # BLIP-2: the Q-Former's queries become this many image tokens; its width and depth
    num_query_tokens: int = Field(9, ge=1)
    qformer_hidden_size: int = Field(128, ge=16)
    qformer_layers: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyBackboneConfig:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        if self.vision_hidden_size % self.vision_heads:
            problems.append(
                f"vision_hidden_size ({self.vision_hidden_size}) must be divisible by "
                f"vision_heads ({self.vision_heads})"
            )
        if self.qformer_hidden_size % self.vision_heads:
            problems.append(
                f"qformer_hidden_size ({self.qformer_hidden_size}) must be divisible by "
                f"vision_heads ({self.vision_heads})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


ModelDtype = Literal["float32", "bfloat16", "float16", "float64"]


class ModelConfig(StrictModel):
    preset: str = "tiny-llava"
    pretrained_path: str | None = None
    tiny: TinyBackboneConfig = TinyBackboneConfig()
    # Where and in which precision the stages that *run* the backbone (layer choice, searches, evaluation, the caption
    # command) hold it; training stages follow their `trainer` block (accelerator, precision). T5 overflows in float16.
    dtype: ModelDtype = "float32"
    device: str = "cpu"  # cpu, cuda, cuda:1, mps; one device (a model split over several is refused)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"device must be cpu, mps, cuda or cuda:<index>, got {value!r}")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from pipeline.models.presets import PRESETS  # local import: keeps `import pipeline.config` light

        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; choose one of {sorted(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _pretrained_needs_path(self) -> ModelConfig:
        from pipeline.models.presets import PRESETS

        if PRESETS[self.preset].needs_pretrained_path and self.pretrained_path is None:
            raise ValueError(f"preset {self.preset!r} loads weights: set model.pretrained_path to a local directory")
        return self


class TaskWeights(StrictModel):
    caption: float = Field(0.6, ge=0)
    description: float = Field(0.15, ge=0)
    vqa: float = Field(0.25, ge=0)

    @model_validator(mode="after")
    def _some_task(self) -> TaskWeights:
        if self.caption + self.description + self.vqa <= 0:
            raise ValueError("at least one task weight must be > 0")
        return self


Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
# auto: bf16-mixed where the accelerator computes bfloat16 natively, else 32-true (pipeline/training/precision.py)
Precision = Literal["auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"]


class OptimizerConfig(StrictModel):
    """AdamW; the learning rate warms up linearly for `warmup_steps`, then follows a cosine down to `min_lr_ratio · lr`
    at the last step; gradients are clipped to norm `grad_clip`."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(30, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class TrainerConfig(StrictModel):
    """Where and how Lightning runs a stage: the same code runs one CPU process or DDP over devices × num_nodes
    processes (CPU processes with gloo, GPUs with NCCL). A training stage's `batch_size` is the global batch: each
    process takes batch_size / (devices × num_nodes) examples of every step's batch, so a configuration means the
    same optimizer steps, examples per step and learning-rate schedule at any process count."""

    accelerator: Accelerator = "cpu"
    devices: int | Literal["auto"] = 1  # processes per node (GPUs, or CPU processes)
    # auto | ddp (Lightning re-runs the stage once per device; parameters that may get no gradient in a step, as
    # LayerSkip's dropped layers, are handled by the stage) | any other Lightning strategy name
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)  # > 1: processes started on every node by torchrun or srun (README)
    precision: Precision = "32-true"
    num_workers: int = Field(0, ge=0)  # data-loader worker processes
    num_threads: int = Field(0, ge=0)  # torch CPU threads per process; 0: leave the default

    @field_validator("devices")
    @classmethod
    def _positive_devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("devices must be auto or ≥ 1")
        return value


class TrainingConfig(StrictModel):
    """What every training stage (fine-tune, imitation, LayerSkip) shares: a step budget, task-mixed batches, a
    validation cadence, the optimizer and the trainer. Each stage subclasses it with its own defaults."""

    max_steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    task_weights: TaskWeights = TaskWeights()
    val_every_steps: int = Field(200, ge=1)
    val_batches: int = Field(4, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()


class VisionPretrainingConfig(StrictModel):
    """Contrastive (CLIP) pre-training of a vision tower built from scratch, before the fine-tune reads it
    (`pipeline.training.vision_pretraining`); presets loaded from a checkpoint bring their own pretrained tower."""

    max_steps: int = Field(400, ge=0)  # 0: the tower stays at its random initialisation
    batch_size: int = Field(128, ge=2)  # images per step: each one's negatives are the others
    description_share: float = Field(0.5, ge=0, le=1)  # chance an image is paired with its description, not a caption
    text_layers: int = Field(2, ge=1)  # the throw-away text encoder's depth (its width is the tower's)
    # scene: each image also scores against its own text with one shape or colour word swapped for one the image has
    # not (NegCLIP's hard negatives: a batch's other images differ in so much that shape is never needed); none: off.
    # Measured on the default: test CIDEr 1.665 -> 1.874, shape VQA 0.17 -> 0.20, for +144 s of pre-training (README)
    hard_negatives: Literal["scene", "none"] = "none"
    # > 0: each patch token an object's box is centred in also learns to name its category (the data set's COCO
    # instances files) through a throw-away linear head, weighted this much against the contrastive loss (region-level
    # supervision, as RegionCLIP / GLIP add to CLIP's); 0: off, e.g. for data without instances files.
    # Measured on the default: shape VQA 0.15 -> 0.60, test CIDEr 1.82 -> 2.33 (README)
    region_weight: float = Field(1.0, ge=0)
    val_batches: int = Field(2, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    # its own, not the fine-tune's: bf16 autocast slows this phase's 128-wide products on CPU (227 s vs 198 s)
    precision: Precision = "32-true"


class FinetuneConfig(TrainingConfig):
    # 0: keep a pretrained checkpoint's weights as they are (the stage still checks that it sees and saves it)
    max_steps: int = Field(300, ge=0)
    trainer: TrainerConfig = TrainerConfig(precision="auto")  # bf16 autocast where native: 1.25x faster steps here
    # LLaVA-1.5 keeps its CLIP tower frozen in every training stage; from scratch, a frozen random tower
    # still carries the pixels (random features), whereas a trainable one collapses (see README)
    train_vision_tower: bool = False
    vision_pretraining: VisionPretrainingConfig = VisionPretrainingConfig()
    eval_samples: int = Field(300, ge=1)  # test images captioned for the end-of-stage CIDEr check
    eval_batch_size: int = Field(100, ge=1)
    eval_max_new_tokens: int = Field(32, ge=1)


class LayerChoiceConfig(StrictModel):
    """Paper A.4: reward(i) = mean max-softmax confidence of the early exit at layer i − μ·i·c."""

    mu: float = Field(0.5, ge=0)
    layer_cost: float | None = Field(None, gt=0)  # c; None: 1/L (each layer a 1/L share of a forward pass)
    max_layer_fraction: float = Field(0.5, gt=0, lt=1)  # candidates i ≤ fraction · L
    val_examples: int = Field(192, ge=1)  # validation examples (task-balanced) the confidence is averaged over
    batch_size: int = Field(32, ge=1)
    trainer: TrainerConfig = TrainerConfig()  # devices > 1: the validation batches are shared out over processes


class ImitationArchitecture(StrictModel):
    """The imitation network's architecture (pipeline/models/imitation.py builds it; the NAS searches over these
    fields). The default is the paper's NAS result: two linear layers of the hidden size and a layer norm."""

    num_linear: Literal[1, 2] = 2
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    dropout: float = Field(0.0, ge=0, lt=1)
    attention: bool = False  # one causal self-attention layer (context beyond the current position)
    num_heads: int = Field(4, ge=1)
    layer_norm: bool = True
    residual: bool = True  # output = h_n + f(h_n): starts as the early-exit draft and learns the difference


class LossWeights(StrictModel):
    ce: float = Field(1.0, ge=0)
    cs: float = Field(1.0, ge=0)
    kd: float = Field(1.0, ge=0)


class MixedSchedule(StrictModel):
    joint_epochs: float = Field(0.5, ge=0)  # k: epochs backbone + imitation train together, then backbone frozen
    backbone_lr: float = Field(2e-4, gt=0)
    # optimizer steps of the mixed schedule, which runs the backbone every step (it trains it); null: max_steps. The
    # frozen heads train from the feature cache, where many more steps cost little
    max_steps: int | None = Field(100, ge=1)
    # it trains the whole backbone, as the fine-tune does, so in the fine-tune's precision (`imitation.trainer`'s
    # float32 suits the frozen heads' narrow products); auto: bf16-mixed where the hardware computes it natively
    precision: Precision = "auto"


class FeaturesConfig(StrictModel):
    """The `features` stage: the frozen backbone's states cached once for every draft trainer."""

    enabled: bool = True  # false: frozen heads, NAS trials and sweep heads run the backbone on every step
    # generated: each cached example's text is the full model's own greedy continuation of its prompt (the text the
    # draft meets while decoding: self-distillation); reference: the data set's caption / description / answer
    targets: Literal["generated", "reference"] = "generated"
    train_examples: int | None = Field(2000, ge=1)  # training examples cached (imitation.task_weights); null: all
    val_examples: int = Field(192, ge=1)
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # storage of the hidden states
    top_k: int = Field(0, ge=0)  # teacher log-probabilities kept per scored token for KD; 0: the whole vocabulary
    batch_size: int = Field(64, ge=1)  # backbone batch while generating the targets and caching


class ImitationConfig(TrainingConfig):
    draft_layers: int | Literal["auto"] = "auto"  # auto: the select_layer stage's choice
    architecture: ImitationArchitecture = ImitationArchitecture()
    fusion: Literal["average", "concat", "attention"] = "average"
    fusion_layers: int = Field(4, ge=1)
    # The fusion table (paper Table 5): a ce+cs+kd head per strategy listed; `fusion` itself reuses the ce+cs+kd
    # variant's head
    fusion_comparison: list[Literal["average", "concat", "attention"]] = ["average", "concat", "attention"]
    variants: list[Literal["ce", "ce+cs", "ce+cs+kd"]] = ["ce", "ce+cs", "ce+cs+kd"]
    weights: LossWeights = LossWeights()  # λ of each term where its variant uses it
    temperature: float = Field(2.0, gt=0)
    mixed: MixedSchedule = MixedSchedule()
    max_steps: int = Field(1250, ge=1)  # 20 epochs of the cached examples (the frozen heads)
    task_weights: TaskWeights = TaskWeights(caption=0.6, description=0.3, vqa=0.1)  # drafting is long-form text
    val_every_steps: int = Field(1250, ge=1)
    val_batches: int = Field(2, ge=1)
    val_decode_prompts: int = Field(8, ge=0)  # validation prompts decoded by SSD to log acceptance
    optimizer: OptimizerConfig = OptimizerConfig(lr=2e-3, weight_decay=0.0, warmup_steps=10)
    # heads trained at once in worker processes; auto: one per 2 cores on CPU, 1 otherwise
    parallel_heads: int | Literal["auto"] = "auto"

    @field_validator("variants")
    @classmethod
    def _some_variant(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("variants must list at least one of ce, ce+cs, ce+cs+kd, each once")
        return value

    def fusion_table_heads(self) -> dict[str, str]:
        """Fusion → the ce+cs+kd head of the fusion table trained with it (a folder of models/imitation and a key of
        metrics/imitation.json): the ce+cs+kd variant for `fusion` itself when that variant is trained, else
        fusion-<kind>."""
        return {
            kind: "ce+cs+kd" if kind == self.fusion and "ce+cs+kd" in self.variants else f"fusion-{kind}"
            for kind in self.fusion_comparison
        }

    @field_validator("fusion_comparison")
    @classmethod
    def _each_fusion_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("fusion_comparison must list each fusion (average, concat, attention) at most once")
        return value

    @model_validator(mode="after")
    def _fusion_needs_cosine(self) -> ImitationConfig:
        # the fusion only shapes the cosine target: with λ_cs = 0 every row of the table would be the same head
        if self.fusion_comparison and self.weights.cs == 0:
            raise ValueError(
                "fusion_comparison compares cosine targets, but weights.cs is 0; "
                "set weights.cs > 0 or fusion_comparison: []"
            )
        return self

    @model_validator(mode="after")
    def _parallel_heads(self) -> ImitationConfig:
        if self.parallel_heads != "auto" and self.parallel_heads < 1:
            raise ValueError("parallel_heads must be auto or ≥ 1")
        if self.parallel_heads not in ("auto", 1) and (self.trainer.devices != 1 or self.trainer.num_nodes != 1):
            raise ValueError(
                "parallel_heads > 1 trains heads in separate processes; "
                "with several devices or nodes (DDP) use parallel_heads: 1"
            )
        return self


class LayerSkipConfig(TrainingConfig):
    """LayerSkip (Elhoushi et al. 2024): continue training the fine-tuned backbone with early-exit losses and
    layer dropout (pipeline/training/layerskip.py), then draft by early exit at `draft_layers`.

    Loss = CE(final layer) + early_exit_scale · Σ_{l=1}^{L-1} (l / Σ_j j) · CE(exit after layer l);
    layer l (0-based) is skipped during training with probability p_max · l / (L − 1). Under DDP a dropped layer gets
    no gradient in that step: the trainer then lets DDP find unused parameters itself (no strategy setting needed).
    """

    draft_layers: int | Literal["auto"] = "auto"  # auto: the select_layer stage's choice (metrics/layer_choice.json)
    p_max: float = Field(0.1, ge=0, lt=1)  # layer-dropout rate of the last layer; 0 for the first, linear between
    early_exit_scale: float = Field(1.0, ge=0)  # total weight of the early-exit terms relative to the final layer's CE
    max_steps: int = Field(60, ge=1)
    val_every_steps: int = Field(30, ge=1)
    val_batches: int = Field(2, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4, warmup_steps=10)
    trainer: TrainerConfig = TrainerConfig(precision="auto")  # the whole backbone trains, as in the fine-tune
    val_decode_prompts: int = Field(16, ge=0)  # validation prompts decoded by early-exit self-speculation
    eval_samples: int = Field(200, ge=1)  # test images captioned for the full-model CIDEr check


class DraftVerifyConfig(StrictModel):
    """Draft & Verify (Zhang et al. 2023): greedy forward search of the skipped layers
    (pipeline/search/skip_layers.py)."""

    prompts: int = Field(6, ge=1)  # validation prompts (half captions, half descriptions) decoded per evaluation
    acceptance_floor: float = Field(0.6, ge=0, le=1)  # a skip set whose measured acceptance is lower is not chosen
    thresholds: list[float] = [0.4, 0.6, 0.8]  # confidence-stop thresholds tried for every skip set
    max_skipped: int = Field(6, ge=1)  # at most this many layers (of 1..L-1) skipped
    max_draft_len: int = Field(8, ge=1)  # the confidence stop's upper bound on a round's length

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        if not value or len(set(value)) != len(value) or any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("thresholds must list at least one probability in [0, 1], each once")
        return value


class LanguageDraftConfig(TrainingConfig):
    """The separate language-only draft model (Gagrani et al. 2024): a small LLaMA-architecture LM trained from
    scratch on the training split's text with the backbone's tokenizer. It reads the prompts' image placeholder
    tokens but never the pixels. Decoder-only backbones only (skipped, the reason recorded, for encoder–decoders)."""

    enabled: bool = True
    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(344, ge=8)
    num_heads: int = Field(4, ge=1)
    max_positions: int = Field(512, ge=16)
    max_steps: int = Field(300, ge=1)
    task_weights: TaskWeights = TaskWeights(caption=0.6, description=0.3, vqa=0.1)
    val_every_steps: int = Field(100, ge=1)
    val_batches: int = Field(2, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(lr=2e-3, warmup_steps=10)

    @model_validator(mode="after")
    def _heads_divide(self) -> LanguageDraftConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class BaselinesConfig(StrictModel):
    layerskip: LayerSkipConfig = LayerSkipConfig()
    draft_verify: DraftVerifyConfig = DraftVerifyConfig()
    language_draft: LanguageDraftConfig = LanguageDraftConfig()


class RayConfig(StrictModel):
    """Where Ray Tune searches run: a local Ray instance by default, an existing cluster when `address` (or the
    RAY_ADDRESS environment variable, which wins) names one."""

    address: str | None = None  # host:port of a cluster's head (`ray start --head`), ray://host:10001, or auto
    num_cpus: int | None = Field(None, ge=1)  # local instance only; null: every core of the machine
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)  # local instance
    cluster_gpus_per_trial: float = Field(1.0, ge=0)  # on a cluster: trials ask for GPUs
    storage_path: str | None = None  # trial results; null: <repo>/ray_results. A cluster needs a path every node reads
    max_failures: int = Field(2, ge=0)  # a trial that raises or is killed is retried this often
    connect_timeout_s: float = Field(10.0, gt=0)  # a cluster address that does not answer fails after this


class NASConfig(StrictModel):
    """Imitation-network architecture search (paper Appendix B): Ray Tune + ASHA over the search space file.

    score = accuracy − cost_weight · draft_cost_ratio, where accuracy is the draft's top-1 agreement with the
    full model on validation tokens (or the decoded acceptance rate) and draft_cost_ratio the price of one draft
    token (n layers + network + LM head) over one full-model token: by `cost`, its measured latency at batch 1 on
    the machine the trial runs on (what decoding pays there) or its FLOPs (hardware independent: what a weight-bound
    GPU pays, roughly)."""

    search_space: str = "experiments/search_spaces/nas.yaml"
    num_samples: int = Field(4, ge=1)  # architectures sampled (random search, seeded)
    max_steps: int = Field(200, ge=1)  # training steps of a trial that ASHA never stops (from the feature cache)
    report_every_steps: int = Field(100, ge=1)  # one ASHA rung unit: validation + report every this many steps
    grace_reports: int = Field(1, ge=1)  # ASHA stops no trial before this many reports
    reduction_factor: float = Field(2.0, gt=1)
    accuracy: Literal["agreement", "acceptance_rate"] = "agreement"
    cost: Literal["latency", "flops"] = "latency"
    cost_weight: float = Field(1.0, ge=0)
    latency_repeats: int = Field(30, ge=1)  # timed draft and full-model steps per trial (interleaved, median)
    val_batches: int = Field(2, ge=1)
    val_decode_prompts: int = Field(2, ge=0)  # decoded at each report for the acceptance rate
    max_concurrent_trials: int | None = Field(None, ge=1)  # null: as many as the resources allow

    @model_validator(mode="after")
    def _acceptance_needs_decoding(self) -> NASConfig:
        if self.accuracy == "acceptance_rate" and self.val_decode_prompts == 0:
            raise ValueError("accuracy: acceptance_rate needs val_decode_prompts > 0 (the prompts it is measured on)")
        return self


class SweepConfig(StrictModel):
    """Sweep of draft layers n, loss weights λ and draft length d (search space file): each trial trains (or
    reuses) the imitation network for its n/λ and measures speed and caption quality on validation images."""

    search_space: str = "experiments/search_spaces/sweep.yaml"
    train_steps: int = Field(1250, ge=1)  # = imitation.max_steps: the train_imitation heads are reused for its n
    captions: int = Field(12, ge=1)  # validation images captioned per trial (CIDEr / BLEU-4)
    descriptions: int = Field(4, ge=0)  # long descriptions per trial (speed on long outputs)
    repeats: int = Field(1, ge=1)  # timing repeats per trial
    max_concurrent_trials: int | None = Field(None, ge=1)


class GrowingScheduleConfig(StrictModel):
    """d = clip(d_min + ⌊t / step⌋, d_min, d_max) after t generated tokens (paper eq. 5 stand-in)."""

    d_min: int = Field(2, ge=1)
    d_max: int = Field(6, ge=1)
    step: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> GrowingScheduleConfig:
        if self.d_max < self.d_min:
            raise ValueError(f"d_max ({self.d_max}) must be >= d_min ({self.d_min})")
        return self


class BackoffConfig(StrictModel):
    """Self-speculative methods draft only while drafting pays off (`pipeline.decoding.AcceptanceBackoff`): when the
    acceptance seen so far makes their d slower than plain decoding, they draft less, down to nothing, probing every
    `probe_every` plain steps whether acceptance has come back."""

    enabled: bool = True
    cost_ratio: float = Field(
        0.15, ge=0, lt=1
    )  # a draft token's cost in full-model tokens (measured ~0.15 on CPU, n=1)
    # what a drafting round's verification pass (d + 1 positions) costs beyond a one-token step, in one-token steps
    round_overhead: float = Field(0.0, ge=0)
    memory: float = Field(0.7, ge=0, lt=1)  # weight of the acceptance seen in earlier rounds, per round
    probe_every: int = Field(4, ge=1)
    max_probe_every: int = Field(32, ge=1)  # each rejected probe doubles the wait, up to this many plain steps
    # the acceptance estimate carries over from one prompt to the next instead of restarting at the prior (a server's
    # policy). Same run, same prompts (benchmark_backoff, d = 5): VQA 0.96x with it, 0.92x restarting; real captions
    # 1.66x vs 1.64x without the backoff (restarting: 1.77x vs 1.86x: early rejections shortened its drafts)
    across_prompts: bool = True


class DecodingConfig(StrictModel):
    # fixed d where a method does not name its own; auto: the sweep's fastest fixed d at the evaluated n
    # (metrics/sweep.json `draft_len_by_layers`)
    draft_len: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    growing: GrowingScheduleConfig = GrowingScheduleConfig()
    backoff: BackoffConfig = BackoffConfig()


class SpeedSampleConfig(StrictModel):
    """The prompts `evaluate` times every method on, at batch 1, interleaved (the paper's per-token latency): the
    first of each task of the split."""

    captions: int = Field(16, ge=1)
    descriptions: int = Field(4, ge=0)
    vqa: int = Field(16, ge=0)
    repeats: int = Field(2, ge=1)  # timing repeats (median per-token latency); one repeat moved ratios by up to 0.2


class EvaluateConfig(StrictModel):
    """Stage `evaluate`: every method on the same test prompts. Quality (caption metrics, VQA accuracy, identity with
    the full model, acceptance) over the test split decoded in batches, shared out over `trainer`'s processes; speed at
    batch 1 on `speed`'s sample of it, timed in one process (speed-ups are ratios of one run)."""

    batch_size: int = Field(64, ge=1)  # rows decoded together for the quality pass (throughput is reported at it)
    # The sample sizes bound the stage's longest part, every method decoding the split. A batch costs as many steps as
    # its longest output, so the defaults are whole batches of 64: 2 of captions, 1 of descriptions, 2 of questions
    # (300 / 64 / 200, 8 batches, before `make repro` had to fit 25 minutes). The fine-tune's sees check scores the full
    # model on its own `eval_samples`; here the rows are compared with each other on the same prompts
    captions: int | None = Field(128, ge=1)  # test images captioned (None: every one)
    # described test images (None: every one). Descriptions are ~65 tokens against a caption's ~13: their one batch is
    # the split's longest
    descriptions: int | None = Field(48, ge=0)
    vqa: int | None = Field(128, ge=0)  # test questions (None: every one)
    speed: SpeedSampleConfig = SpeedSampleConfig()
    draft_lens: list[int] = [1, 2, 5]  # speed-up by d (with decoding.draft_len) (paper Fig. 9), ours (ce+cs+kd)
    # Hugging Face's assistant_model with the language-only draft as a Table 1 row: HF refuses batches, so it decodes
    # the whole split one prompt at a time (~15 min of the default evaluate on 2 cores); the tests check it is greedy
    hf_assisted: bool = False
    meteor: bool = True  # needs Java (one JVM for all methods)
    spice: bool = True  # reported unavailable, with the reason, when Stanford CoreNLP's jars are absent
    # devices > 1: the split is shared out over processes and the quality metrics computed over all of it on rank
    # zero; speed is timed by rank zero alone, on the whole `speed` sample
    trainer: TrainerConfig = TrainerConfig()

    @field_validator("draft_lens")
    @classmethod
    def _lens(cls, value: list[int]) -> list[int]:
        if not value or any(d < 1 for d in value) or len(set(value)) != len(value):
            raise ValueError("draft_lens must list distinct positive integers")
        return value

    @model_validator(mode="after")
    def _sample_within_split(self) -> EvaluateConfig:
        for task in ("captions", "descriptions", "vqa"):
            split, sample = getattr(self, task), getattr(self.speed, task)
            if split is not None and sample > split:
                raise ValueError(f"speed.{task} ({sample}) must not exceed {task} ({split}): it is a sample of them")
        return self


class TrackingConfig(StrictModel):
    experiment: str = "fastvlm-ssd"
    # trained drafts (imitation networks, LayerSkip's backbone) logged as MLflow models and registered as
    # <experiment>-<kind>-<name> (e.g. fastvlm-ssd-imitation-ce-cs-kd), loadable as models:/<name>/<version>
    register_models: bool = True


class Params(StrictModel):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    layer_choice: LayerChoiceConfig = LayerChoiceConfig()
    imitation: ImitationConfig = ImitationConfig()
    features: FeaturesConfig = FeaturesConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    decoding: DecodingConfig = DecodingConfig()
    ray: RayConfig = RayConfig()
    nas: NASConfig = NASConfig()
    sweep: SweepConfig = SweepConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _untrained_backbone(self) -> Params:
        from pipeline.models.presets import PRESETS

        if self.finetune.max_steps == 0 and not PRESETS[self.model.preset].needs_pretrained_path:
            raise ValueError(
                f"finetune.max_steps 0 keeps a pretrained checkpoint as it is, but preset {self.model.preset!r} is "
                "trained from scratch: give it steps, or use a pretrained preset (llava, blip2)"
            )
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source} has {error.error_count()} invalid field(s):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {where}: unknown key (typo? remove it or check the spelling)")
        else:
            lines.append(f"  - {where}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params dict; raise one `ConfigError` listing every bad field."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"parameter file not found: {path} (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, finetune, ...)")
    return parse_params(raw, source=str(path))
