"""bf16 training on CPU attends with eager attention (torch's CPU flash-attention backward is slow there for short
sequences); the models get their own kernel back afterwards; float32, float64 and accelerators keep SDPA."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from pipeline.config import TrainerConfig, TrainingConfig
from pipeline.training import trainer
from pipeline.training.attention import attention_for_training
from pipeline.training.trainer import fit_module
from tests.conftest import make_tiny_llava
from tests.training.tiny_fit import FourFeatureData


def implementations(model) -> tuple[str, str, str]:
    return (
        model.config._attn_implementation,
        model.config.text_config._attn_implementation,
        model.config.vision_config._attn_implementation,
    )


class _RecordsAttention(L.LightningModule):
    """Holds a tiny LLaVA beside its own layer (as the training modules hold the backbone) and records the attention
    its steps run with."""

    def __init__(self) -> None:
        super().__init__()
        self.model = make_tiny_llava(num_layers=1).train()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: list[tuple[str, str, str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(implementations(self.model))
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.seen.append(implementations(self.model))
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_bf16_cpu_run_trains_with_eager_attention_and_gives_the_model_sdpa_back(capsys, monkeypatch):
    tags: dict[str, str] = {}
    monkeypatch.setattr(trainer.tracking, "set_tags", tags.update)
    module = _RecordsAttention()
    assert implementations(module.model) == ("sdpa", "sdpa", "sdpa")
    cfg = TrainingConfig(
        max_steps=2, val_every_steps=2, trainer=TrainerConfig(accelerator="cpu", precision="bf16-mixed")
    )
    fit_module(module, cfg, FourFeatureData(), progress_bar=False)
    assert set(module.seen) == {("eager", "eager", "eager")}
    assert implementations(module.model) == ("sdpa", "sdpa", "sdpa")
    assert "_RecordsAttention: precision bf16-mixed (trainer.precision bf16-mixed), eager attention" in (
        capsys.readouterr().out
    )
    # the stage's MLflow run says what the fit ran in
    assert tags == {"precision/_RecordsAttention": "bf16-mixed", "attention/_RecordsAttention": "eager"}


def test_a_float32_cpu_run_keeps_sdpa(capsys):
    module = _RecordsAttention()
    cfg = TrainingConfig(max_steps=2, val_every_steps=2, trainer=TrainerConfig(accelerator="cpu", precision="32-true"))
    fit_module(module, cfg, FourFeatureData(), progress_bar=False)
    assert set(module.seen) == {("sdpa", "sdpa", "sdpa")}
    assert "_RecordsAttention: precision 32-true (trainer.precision 32-true)\n" in capsys.readouterr().out


def test_eager_attention_gives_the_loss_and_gradients_of_sdpa():
    model = make_tiny_llava(num_layers=2).train()
    ids = torch.randint(5, 60, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right-padded, as the training batches are: the two kernels' masks must agree too

    def loss_and_grads():
        model.zero_grad()
        loss = model.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.model.language_model.parameters() if p.grad is not None]

    sdpa_loss, sdpa_grads = loss_and_grads()
    with attention_for_training(model, "cpu", "bf16-mixed") as attention:
        assert attention == "eager"
        eager_loss, eager_grads = loss_and_grads()
    torch.testing.assert_close(eager_loss, sdpa_loss, rtol=1e-5, atol=1e-6)
    assert len(eager_grads) == len(sdpa_grads) > 0
    for eager, sdpa in zip(eager_grads, sdpa_grads, strict=True):
        torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("accelerator", "precision"),
    [("gpu", "bf16-mixed"), ("cuda", "bf16-true"), ("cpu", "64-true"), ("cpu", "16-mixed")],
)
def test_an_accelerator_or_another_precision_keeps_the_models_own_attention(accelerator, precision):
    # float64: the eager kernels would compute the softmax in float32
    model = make_tiny_llava(num_layers=1)
    with attention_for_training(model, accelerator, precision) as attention:
        assert attention is None
        assert implementations(model) == ("sdpa", "sdpa", "sdpa")


def test_a_model_that_already_attends_eagerly_is_left_alone_and_a_failed_run_still_restores():
    eager = make_tiny_llava(num_layers=1)
    eager.set_attn_implementation("eager")
    with attention_for_training(eager, "cpu", "bf16-mixed") as attention:
        assert attention is None
    assert implementations(eager) == ("eager", "eager", "eager")
    model = make_tiny_llava(num_layers=1)
    with pytest.raises(RuntimeError, match="interrupted"), attention_for_training(model, "cpu", "bf16-mixed"):
        raise RuntimeError("interrupted")
    assert implementations(model) == ("sdpa", "sdpa", "sdpa")
