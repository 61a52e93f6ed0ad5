"""The imitation network: layer-`n` hidden states → an imitation of the deep layers' representation.

Its output goes through the backbone's own final norm and LM head (it owns neither), so the draft is
`lm_head(final_norm(imitation(h_n)))`. Its architecture is `pipeline.config.ImitationArchitecture` (the type
params.yaml and the NAS use too); the default is the paper's NAS result: two linear layers of the hidden size
and a layer norm. An optional single causal
self-attention layer gives the draft context beyond the current position; it then keeps its own KV cache
while decoding and implements the decoder's `StatefulHead` protocol (`reset`, `crop`).

The module is saved as `config.json` + `model.safetensors` and loads without any training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import ImitationArchitecture
from pipeline.errors import ModelLoadError
from pipeline.io import atomic_directory

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class _CausalSelfAttention(nn.Module):
    """One causal multi-head attention layer with a KV cache for decoding one position at a time.

    Training calls it on whole sequences (causal mask, no cache); decoding calls it on the prompt, then on
    one new position per call, appending to its cache; `crop(length)` rolls the cache back.
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.use_cache = False

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        return x.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, select: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`attention_mask` [B, S]: which of the S keys (cached + new) each row may attend to (None: all). `select`
        [B, T] (bool): return only those queries' outputs, [N, H] (every position is still a key)."""
        q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
        past = 0
        if self.use_cache:
            if self.keys is not None:
                assert self.values is not None  # keys and values are cached together
                past = self.keys.shape[2]
                k = torch.cat([self.keys, k], dim=2)
                v = torch.cat([self.values, v], dim=2)
            self.keys, self.values = k, v
        length, total = q.shape[2], k.shape[2]
        mask = None
        if length > 1:
            # query i (slot past + i) sees keys 0..past + i
            mask = torch.ones(length, total, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if attention_mask is not None:
            keys = attention_mask[:, -total:].bool().view(-1, 1, 1, total)
            # every query also sees its own slot: a left-padding slot of a short prompt would otherwise see no key
            # at all (a NaN row); its output is never used
            own = torch.arange(total, device=x.device) == past + torch.arange(length, device=x.device).unsqueeze(1)
            mask = (keys if mask is None else mask & keys) | own
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        batch, _, _, head_dim = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, length, self.num_heads * head_dim)
        return self.out(attended if select is None else attended[select])


class ImitationNetwork(nn.Module):
    def __init__(self, hidden_size: int, architecture: ImitationArchitecture | None = None) -> None:
        super().__init__()
        config = architecture or ImitationArchitecture()
        if config.attention and hidden_size % config.num_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by the attention's num_heads {config.num_heads}"
            )
        self.hidden_size = hidden_size
        self.architecture = config
        hidden = hidden_size
        self.attention = _CausalSelfAttention(hidden, config.num_heads) if config.attention else None
        layers: list[nn.Module] = [nn.Linear(hidden, hidden)]
        if config.num_linear == 2:
            layers += [ACTIVATIONS[config.activation](), nn.Dropout(config.dropout), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(hidden) if config.layer_norm else nn.Identity()
        if config.residual:
            # Start exactly at the early-exit draft (f = 0): training can only improve on it
            output = self.mlp[-1]
            assert isinstance(output, nn.Linear)  # the MLP always ends in a linear layer
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,  # the decoder's StatefulHead call; the attention has no positions
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T, H] → [B, T, H]; with `select` [B, T] (bool), only the selected positions' outputs, [N, H]: training
        scores a fraction of the positions, and with attention every position must still be seen as a key, but only
        the scored ones need the output projection and the MLP."""
        picked = hidden if select is None else hidden[select]
        # Pre-norm residual form: with `residual` the output is h_n + f(h_n), so the zero-initialised
        # network starts as exactly the early-exit draft; without it, norm(f(h_n)) as in the paper's sketch.
        if not self.architecture.residual:
            x = picked if self.attention is None else self.attention(hidden, attention_mask, select)
            return self.norm(self.mlp(x))
        if self.attention is None:
            return picked + self.mlp(self.norm(picked))
        x = self.norm(hidden)
        x = (x if select is None else x[select]) + self.attention(x, attention_mask, select)
        return picked + self.mlp(x)

    # --- the decoder's StatefulHead protocol (only meaningful with attention) -------------------------
    def reset(self) -> None:
        if self.attention is not None:
            self.attention.keys = self.attention.values = None
            self.attention.use_cache = True

    def crop(self, length: int) -> None:
        if self.attention is not None and self.attention.keys is not None:
            assert self.attention.values is not None  # keys and values are cached together
            self.attention.keys = self.attention.keys[:, :, :length]
            self.attention.values = self.attention.values[:, :, :length]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows `rows` of the decode cache (the decoder drops finished rows)."""
        if self.attention is not None and self.attention.keys is not None:
            assert self.attention.values is not None  # keys and values are cached together
            self.attention.keys = self.attention.keys[rows]
            self.attention.values = self.attention.values[rows]

    def stop_caching(self) -> None:
        """Back to whole-sequence calls (training, validation batches) after decoding.

        Needed explicitly: Lightning restores `training` flags after validation without calling `train()`."""
        if self.attention is not None:
            self.attention.use_cache = False
            self.attention.keys = self.attention.values = None

    def train(self, mode: bool = True) -> ImitationNetwork:
        # Whole sequences in training: no decode cache
        if mode:
            self.stop_caching()
        return super().train(mode)


def load_draft_head(path: str | Path, model: nn.Module) -> tuple[nn.Module, dict]:
    """A saved imitation network as a draft head for `model`: in the dtype and on the device of the model's hidden
    states (a float32 head on a bfloat16 backbone would fail at its first matmul), in eval mode; and the rest of its
    config (e.g. `draft_layers`)."""
    from pipeline.models.adapters import adapter_for

    network, extra = load_imitation(path)
    weight = adapter_for(model).embed_weight
    return as_draft_head(network.to(device=weight.device, dtype=weight.dtype).eval()), extra


def as_draft_head(network: ImitationNetwork) -> nn.Module:
    """The network as the decoder's `head`: stateful (reset/crop) only when it has attention."""
    return network if network.attention is not None else _StatelessHead(network)


class _StatelessHead(nn.Module):
    """Hides reset/crop from the decoder for attention-free networks: no state, no prompt pass needed."""

    def __init__(self, network: ImitationNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.network(hidden)


def searched_architecture(base: ImitationArchitecture, searched: str | Path | None = None) -> ImitationArchitecture:
    """The architecture to build: params' `base`, overridden by the nas stage's winner when its file exists."""
    if searched is None or not Path(searched).exists():
        return base
    try:
        found = json.loads(Path(searched).read_text())["architecture"]
        return ImitationArchitecture.model_validate({**base.model_dump(), **found})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{searched} is not a nas result with a valid 'architecture' mapping: {exc}; re-run the nas stage"
        ) from None


def save_imitation(network: ImitationNetwork, path: str | Path, extra: dict | None = None) -> None:
    """`config.json` (architecture + `extra`, e.g. the draft layer n) and `model.safetensors`, atomically."""
    saved = {"hidden_size": network.hidden_size, "architecture": network.architecture.model_dump(), **(extra or {})}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(saved, indent=1))
        save_file({k: v.detach().contiguous() for k, v in network.state_dict().items()}, str(tmp / WEIGHTS_FILE))


def load_imitation(path: str | Path) -> tuple[ImitationNetwork, dict]:
    """The network and the rest of its config file (e.g. `draft_layers`)."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.exists() or not weights_file.exists():
        raise ModelLoadError(
            f"{path} is not a saved imitation network (needs {CONFIG_FILE} and {WEIGHTS_FILE}); run train_imitation"
        )
    try:
        saved = json.loads(config_file.read_text())
        architecture = dict(saved.pop("architecture"))
        # heads saved before the architecture became its own type kept the hidden size inside it
        hidden_size = int(saved.pop("hidden_size", None) or architecture.pop("hidden_size"))
        architecture.pop("hidden_size", None)
        network = ImitationNetwork(hidden_size, ImitationArchitecture.model_validate(architecture))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not a valid imitation network config: {exc}") from None
    state = load_file(str(weights_file))
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{weights_file} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    network.eval()
    return network, saved
