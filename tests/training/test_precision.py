"""`auto` precision: bf16 autocast where the hardware computes bfloat16 natively, float32 elsewhere, and the trainer
really runs in what it resolves to."""

import lightning as L
import pytest
import torch

from pipeline.config import FinetuneConfig, Params, TrainerConfig, TrainingConfig
from pipeline.training import precision as precision_module
from pipeline.training import vision_pretraining
from pipeline.training.precision import resolved_precision
from pipeline.training.trainer import fit_module
from tests.conftest import tiny_backbone
from tests.training.tiny_fit import FourFeatureData


@pytest.fixture
def native_bf16(monkeypatch):
    def set_native(native: bool) -> None:
        monkeypatch.setattr(precision_module, "cpu_computes_bf16", lambda: native)

    return set_native


def test_auto_is_bf16_mixed_on_a_cpu_with_bf16_instructions_and_float32_on_one_without(native_bf16):
    native_bf16(True)
    assert resolved_precision(TrainerConfig(precision="auto")) == "bf16-mixed"
    native_bf16(False)
    assert resolved_precision(TrainerConfig(precision="auto")) == "32-true"


def test_an_explicit_precision_is_kept_whatever_the_hardware(native_bf16):
    native_bf16(True)
    assert resolved_precision(TrainerConfig(precision="32-true")) == "32-true"
    native_bf16(False)
    assert resolved_precision(TrainerConfig(precision="bf16-mixed")) == "bf16-mixed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA fallback")
def test_auto_on_a_gpu_accelerator_without_cuda_or_on_mps_is_float32(native_bf16):
    native_bf16(True)  # the CPU's instructions do not matter there
    assert resolved_precision(TrainerConfig(accelerator="gpu", precision="auto")) == "32-true"
    assert resolved_precision(TrainerConfig(accelerator="mps", precision="auto")) == "32-true"


def test_the_backbone_trainings_default_to_auto_and_the_narrow_ones_to_float32():
    params = Params()
    assert params.finetune.trainer.precision == "auto"
    assert params.baselines.layerskip.trainer.precision == "auto"
    assert params.imitation.mixed.precision == "auto"  # the mixed schedule trains the backbone too
    assert params.finetune.vision_pretraining.precision == "32-true"
    assert params.imitation.trainer.precision == "32-true"


class _RecordsMatmulDtype(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.dtypes: list[torch.dtype] = []

    def training_step(self, batch, batch_idx):
        out = self.layer(batch[0])
        self.dtypes.append(out.dtype)
        loss = out.float().pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).float().pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("native", [True, False])
def test_the_trainer_computes_in_the_resolved_precision(native_bf16, native):
    native_bf16(native)
    module = _RecordsMatmulDtype()
    cfg = TrainingConfig(max_steps=2, val_every_steps=2, trainer=TrainerConfig(precision="auto"))
    run = fit_module(module, cfg, FourFeatureData(), progress_bar=False)
    assert run.precision == ("bf16-mixed" if native else "32-true")
    assert set(module.dtypes) == {torch.bfloat16 if native else torch.float32}
    assert module.layer.weight.dtype == torch.float32  # mixed: the weights stay float32


def test_vision_pretraining_runs_in_its_own_precision_not_the_finetunes(monkeypatch, tiny_data):
    splits, tokenizer = tiny_data
    seen: list[str] = []

    def fake_fit(module, settings, data, **kwargs):
        seen.append(settings.trainer.precision)
        raise StopIteration  # the settings are all this test needs

    monkeypatch.setattr(vision_pretraining, "fit_module", fake_fit)
    cfg = FinetuneConfig(
        trainer=TrainerConfig(precision="bf16-mixed"),
        vision_pretraining={"max_steps": 1, "batch_size": 2, "precision": "32-true"},
    )
    backbone = tiny_backbone(tokenizer, "tiny-llava", num_layers=1)
    with pytest.raises(StopIteration):
        vision_pretraining.pretrain_vision_tower(
            backbone.adapter.vision_encoder, tokenizer, backbone.image_processor, splits, cfg, seed=0
        )
    assert seen == ["32-true"]
