"""MaskedModel: switch units of a frozen Hugging Face model off, by a fixed circuit or by
learnable masks, through forward hooks that leave the model's own modules and kernels alone.

Where the masks act is the units' geometry (`models/geometry.py`, `SITES`): a head's slice of
the attention output projection's input, a neuron's input channel of the MLP down projection, a
block's whole output. An ablated unit takes the value `keep * x + (1 - keep) * b`, b = 0 (zero
ablation) or the unit's mean over reference prompts (mean ablation, `torch.lerp`, exact at keep
= 0 and keep = 1). A weight unit, entry (r, c) of an output projection W, is ablated by taking
its share out of the projection's output: `y - (x - b) @ (W * (1 - keep)).T`, b the mean of
input channel c (mean ablation: the entry then sees its input's mean) or 0. Hooks are removed on
leaving a view, and weights are never written, so the model is left bit for bit as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.hooks import RemovableHandle

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.fileio import atomic_path
from safeseek.masking.parametrizations import PARAMETRIZATIONS, MaskParametrization
from safeseek.models.adapters import locate
from safeseek.models.geometry import (
    ACTIVATION_GRANULARITIES,
    GRANULARITIES,
    LAYER_PARTS,
    SITES,
    WEIGHT_MATRICES,
    channel_width,
    expand,
    out_in,
    site_modules,
    weight_blocks,
)
from safeseek.scenarios import VIEWS

ABLATIONS = ("zero", "mean")
MASKS_FORMAT = "safeseek-masks"

Batch = Mapping[str, torch.Tensor]


def _ablate(x: torch.Tensor, keep: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """`keep * x + (1 - keep) * mean` over the last dim; x is flattened to 2-D because CPU
    kernels broadcast a vector over a matrix faster than over a 3-D tensor."""
    keep = keep.to(x.dtype)
    flat = x.reshape(-1, x.shape[-1])
    out = flat * keep if mean is None else torch.lerp(mean.to(x.dtype), flat, keep)
    return out.view(x.shape)


def _ablate_entries(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor,
    mean: torch.Tensor | None,
) -> torch.Tensor:
    """The projection's output `y` (of input `x`) with the entries where `keep` (`[out, in]`)
    is 0 taken out: each then contributes as if its input were `mean` (or 0)."""
    weight = out_in(module, module.weight)
    dropped = weight * (1 - keep).to(weight.dtype)
    shift = x if mean is None else x - mean.to(x.dtype)
    return y - F.linear(shift, dropped)


class MaskedModel(nn.Module):
    """Masks over the units of `model`; only the mask logits are parameters of this module.

    Views (context managers, one at a time), named as objective terms name them
    (`scenarios.VIEWS`): `without(c)` / `learned("without")` run the model without the circuit
    (G \\ C), `only(c)` / `learned("only")` the circuit alone (C only); `c` is a fixed Circuit,
    `learned` uses the learnable masks, whose membership says which units are *in the circuit*.
    """

    def __init__(
        self,
        model: nn.Module,
        granularities: Iterable[str] = ("head", "neuron"),
        parametrization: str = "ste",
        ablation: str = "zero",
        reference: Iterable[Batch | str] | None = None,
        tokenizer: Any = None,
        init_logit: float | None = None,
        **parametrization_kwargs: Any,
    ) -> None:
        super().__init__()
        self.granularities = tuple(dict.fromkeys(granularities))
        unknown = [g for g in self.granularities if g not in GRANULARITIES]
        if unknown or not self.granularities:
            raise SafeSeekError(
                f"unknown granularity {unknown[0] if unknown else '(none)'!r}; "
                f"choose from {', '.join(GRANULARITIES)}"
            )
        if parametrization not in PARAMETRIZATIONS:
            raise SafeSeekError(
                f"unknown parametrization {parametrization!r}; "
                f"choose from {', '.join(PARAMETRIZATIONS)}"
            )
        if ablation not in ABLATIONS:
            raise SafeSeekError(f"unknown ablation {ablation!r}; choose from zero, mean")
        # Kept out of nn.Module's registry so that parameters() yields the mask logits only.
        self.__dict__["model"] = model
        self.parts = locate(model)
        self.arch = self.parts.arch
        self.parametrization = parametrization
        self.ablation = ablation
        device = next(model.parameters()).device
        cls = PARAMETRIZATIONS[parametrization]
        self.masks = nn.ModuleDict(
            {
                g: cls(
                    (self.arch.n_layers, self.arch.units_per_layer(g)),
                    init_logit=init_logit,
                    device=device,
                    **parametrization_kwargs,
                )
                for g in self.granularities
            }
        )
        self._means: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        if reference is not None:
            self.fit_means(reference, tokenizer=tokenizer)

    # -- shapes ----------------------------------------------------------------------------
    @property
    def num_units(self) -> dict[str, int]:
        return {g: self.arch.num_units[g] for g in self.granularities}

    # -- mean ablation ---------------------------------------------------------------------
    @torch.no_grad()
    def fit_means(self, reference: Iterable[Batch | str], tokenizer: Any = None) -> None:
        """Store each unit's mean activation over the non-padding tokens of `reference`, each
        sequence's first token left out: it is an attention sink whose activations are orders of
        magnitude larger in many LLMs ("massive activations"), and averaged in they put a large
        constant at every position (SmolLM2-135M, 20 layer-28 neurons mean-ablated: KL 4.6 with
        the first token, 0.07 without; zero ablation 0.84).

        `reference` holds model-input batches (`input_ids`, optional `attention_mask`) or
        plain prompts, which need `tokenizer`.
        """
        self._require_idle()
        batches = _as_batches(reference, tokenizer, self._device)
        sums = {
            g: torch.zeros(self._sum_shape(g), dtype=torch.float64)
            for g in ACTIVATION_GRANULARITIES
        }
        current: dict[str, torch.Tensor] = {}  # the token mask of the batch being run
        tokens = 0

        def accumulate(granularity: str, layer: int, part: int = 0) -> Callable:
            def hook(x: torch.Tensor) -> None:
                flat = x.detach()[current["mask"]].double().sum(0).cpu()
                if granularity == "layer":
                    sums[granularity][layer, part] += flat
                else:
                    sums[granularity][layer] += flat

            return hook

        handles = self._register_all(accumulate, observe=True)
        try:
            for batch in batches:
                mask = batch.get("attention_mask")
                ids = batch["input_ids"]
                real = (mask if mask is not None else torch.ones_like(ids)).bool()
                first = real.int().argmax(1)  # each row's first real token, for either padding
                real[torch.arange(len(real)), first] = False
                current["mask"] = real
                tokens += int(current["mask"].sum())
                self.model(**batch)
        finally:
            for handle in handles:
                handle.remove()
        if tokens == 0:
            raise SafeSeekError("mean ablation needs at least one reference token")
        self._means = {g: (s / tokens).float().to(self._device) for g, s in sums.items()}

    def _sum_shape(self, granularity: str) -> tuple[int, ...]:
        L, width = self.arch.n_layers, channel_width(self.arch, granularity)
        return (L, len(LAYER_PARTS), width) if granularity == "layer" else (L, width)

    @property
    def means(self) -> dict[str, torch.Tensor]:
        """Per-channel reference means (`head`: [L, heads*head_dim], `neuron`: [L, I],
        `layer`: [L, 2, hidden]; weight units read the head and neuron channels they take as
        input); empty until `fit_means` ran."""
        return dict(self._means)

    def _mean(self, granularity: str, layer: int, part: int = 0) -> torch.Tensor | None:
        if self.ablation == "zero":
            return None
        if not self._means:
            raise SafeSeekError(
                "mean ablation needs reference prompts: pass reference=... to MaskedModel "
                "or call fit_means(...) first"
            )
        if granularity == "weight":  # the input channels of the part's projection
            return self._means[WEIGHT_MATRICES[part][1]][layer]
        mean = self._means[granularity][layer]
        return mean[part] if granularity == "layer" else mean

    # -- hooks -----------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _register_all(
        self, make_hook: Callable[..., Callable], observe: bool = False, layers=None
    ) -> list[RemovableHandle]:
        """Register one hook per (granularity, layer, part): `make_hook(g, layer, part)` returns
        a function of the hooked tensor (weight units: of the module, its input and its output);
        with `observe` (activation granularities only) its return value is ignored."""
        handles = []
        grans = ACTIVATION_GRANULARITIES if observe else self.granularities
        # Hooks on one module run in the order registered: a weight unit's share comes out of
        # its projection's output before a layer unit replaces that whole output.
        for g in sorted(grans, key=("head", "neuron", "weight", "layer").index):
            side = SITES[g].side
            for layer in range(self.arch.n_layers) if layers is None else layers.get(g, ()):
                for part, module in enumerate(site_modules(self.parts, g, layer)):
                    hook = make_hook(g, layer, part)
                    if side == "output":
                        handles.append(module.register_forward_hook(_output_hook(hook)))
                    elif side == "input":
                        handles.append(module.register_forward_pre_hook(_input_hook(hook)))
                    else:
                        handles.append(module.register_forward_hook(_weight_hook(hook)))
        return handles

    def _require_idle(self) -> None:
        if self._handles:
            raise SafeSeekError("a view is already active on this MaskedModel; leave it first")

    @contextlib.contextmanager
    def _view(self, keep_of: Callable[[], dict[str, torch.Tensor]], fixed: bool) -> Iterator[None]:
        """Install hooks that read keep masks `[L, channels]` from `state`.

        Fixed views compute the masks once and hook only layers where something is ablated;
        learned views recompute them at every forward of the decoder stack (so a hard-concrete
        sample is shared by all layers of one forward pass, and refreshed for the next).
        """
        self._require_idle()
        state: dict[str, tuple[torch.Tensor, ...]] = {}
        dtype = next(self.parts.attn_out[0].parameters()).dtype

        def refresh(*_: Any) -> None:
            # One unbind per forward: its backward stacks the per-layer gradients in one op.
            state.update({g: k.to(dtype).unbind(0) for g, k in keep_of().items()})

        blocks = weight_blocks(self.arch)

        def make_hook(granularity: str, layer: int, part: int = 0) -> Callable:
            mean = self._mean(granularity, layer, part)
            if granularity == "weight":
                _, first, n_out, n_in = blocks[part]

                def entries(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    keep = state[granularity][layer][first : first + n_out * n_in]
                    return _ablate_entries(module, x, y, keep.view(n_out, n_in), mean)

                return entries
            if granularity == "layer":
                return lambda x: _ablate(x, state[granularity][layer][part], mean)
            return lambda x: _ablate(x, state[granularity][layer], mean)

        try:
            if fixed:
                refresh()
                active = {
                    g: [i for i, row in enumerate(k) if not bool((row == 1).all())]
                    for g, k in state.items()
                }
                self._handles = self._register_all(make_hook, layers=active)
            else:
                self._handles = self._register_all(make_hook)
                self._handles.append(self.parts.backbone.register_forward_pre_hook(refresh))
            yield
        finally:
            self.detach()

    def _fixed_keep(self, circuit: Circuit, inside: bool) -> dict[str, torch.Tensor]:
        circuit.check(self.arch)
        extra = [g for g in GRANULARITIES if circuit.units(g) and g not in self.granularities]
        if extra:
            raise SafeSeekError(
                f"circuit has {extra[0]} units but this MaskedModel masks only "
                f"{', '.join(self.granularities)}"
            )
        keep = {}
        for g in self.granularities:
            member = circuit.membership(self.arch, g).to(self._device, torch.float32)
            keep[g] = expand(self.arch, g, member if inside else 1.0 - member)
        return keep

    # -- views -----------------------------------------------------------------------------
    def without(self, circuit: Circuit) -> contextlib.AbstractContextManager[None]:
        """The full model with `circuit` ablated (G \\ C)."""
        keep = self._fixed_keep(circuit, inside=False)
        return self._view(lambda: keep, fixed=True)

    def only(self, circuit: Circuit) -> contextlib.AbstractContextManager[None]:
        """Only `circuit` (every unit of this model's granularities outside it ablated)."""
        keep = self._fixed_keep(circuit, inside=True)
        return self._view(lambda: keep, fixed=True)

    @contextlib.contextmanager
    def learned(self, view: str = "without") -> Iterator[None]:
        """Forward passes use the learnable masks: without the circuit (`"without"`) or the
        circuit alone (`"only"`). Model weights are frozen meanwhile, so gradients reach only
        the masks."""
        if view not in VIEWS:
            raise SafeSeekError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
        inside = view == "only"

        def keep_of() -> dict[str, torch.Tensor]:
            out = {}
            for g, mask in self.masks.items():
                member = mask()
                out[g] = expand(self.arch, g, member if inside else 1.0 - member)
            return out

        self._require_idle()
        self._freeze_weights()
        with self._view(keep_of, fixed=False):
            yield

    @contextlib.contextmanager
    def scaled(self, keep: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Every unit keeps `keep[g][layer, unit]` of its activation, the rest is its ablation
        value: between the full model (1) and the unit removed (0), and differentiable in
        `keep` -- the path integrated gradients follow (`baselines/patching.py`). Model weights
        are frozen meanwhile. A granularity left out of `keep` is kept whole."""
        unknown = [g for g in keep if g not in self.granularities]
        if unknown:
            raise SafeSeekError(
                f"this MaskedModel masks {', '.join(self.granularities)}, not {unknown[0]}"
            )
        for g, k in keep.items():
            want = (self.arch.n_layers, self.arch.units_per_layer(g))
            if tuple(k.shape) != want:
                raise SafeSeekError(f"{g} keep values must be shaped {want}, got {tuple(k.shape)}")
        whole = {
            g: torch.ones(self.arch.n_layers, self.arch.units_per_layer(g), device=self._device)
            for g in self.granularities
            if g not in keep
        }
        values = {**whole, **keep}
        self._require_idle()
        self._freeze_weights()
        with self._view(lambda: {g: expand(self.arch, g, k) for g, k in values.items()}, False):
            yield

    def _freeze_weights(self) -> None:
        """Model weights out of autograd while a learned view is active (`detach` restores)."""
        self._frozen = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._frozen:
            p.requires_grad_(False)

    def detach(self) -> None:
        """Remove every hook and restore the weights' requires_grad flags."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for p, flag in self._frozen:
            p.requires_grad_(flag)
        self._frozen = []

    # -- reading and writing masks -----------------------------------------------------------
    def expected_size(self) -> dict[str, torch.Tensor]:
        """Differentiable expected circuit size per granularity (for sparsity terms)."""
        return {g: mask.expected_size() for g, mask in self.masks.items()}

    def metadata(self) -> dict[str, Any]:
        """What a circuit read off these masks records about how it was made."""
        mask: MaskParametrization = next(iter(self.masks.values()))
        settings = {k: v for k, v in vars(mask).items() if isinstance(v, float)}
        return {
            "model": {
                "name": getattr(self.model.config, "_name_or_path", "") or "",
                "architecture": self.arch.to_dict(),
                "fingerprint": self.arch.fingerprint(),
            },
            "granularities": list(self.granularities),
            "parametrization": self.parametrization,
            "parametrization_settings": settings,
            "ablation": self.ablation,
            "threshold": "deterministic mask > 0.5",
        }

    @classmethod
    def for_circuit(
        cls,
        model: nn.Module,
        circuit: Circuit,
        masks_path: str | os.PathLike[str] | None = None,
    ) -> MaskedModel:
        """The one way to rebuild a saved circuit's masks: its granularities, parametrization
        and ablation as circuit.json records them, and (mean ablation) the reference means from
        the masks.safetensors that discovery wrote beside it."""
        meta = circuit.metadata
        granularities = (
            meta.get("granularities")
            or [g for g in GRANULARITIES if circuit.units(g)]
            or ["head", "neuron"]
        )
        ablation = meta.get("ablation", "zero")
        mm = cls(
            model,
            granularities=granularities,
            parametrization=meta.get("parametrization", "ste"),
            ablation=ablation,
        )
        if ablation == "mean":
            if masks_path is None or not os.path.isfile(masks_path):
                raise SafeSeekError(
                    f"the circuit uses mean ablation: its masks.safetensors (with the reference "
                    f"means) must lie beside circuit.json ({masks_path or 'none given'})"
                )
            mm.load_masks(masks_path)
        return mm

    def circuit(self, **metadata: Any) -> Circuit:
        """The current masks read off as a Circuit; `metadata` adds e.g. seed or data hash."""
        hard = {g: mask.hard().cpu() for g, mask in self.masks.items()}
        return Circuit.from_membership(hard, metadata={**self.metadata(), **metadata})

    @torch.no_grad()
    def set_circuit(self, circuit: Circuit, logit: float = 3.0) -> None:
        """Set the logits so that the masks read off exactly `circuit` (+logit in, -logit out)."""
        for g, mask in self.masks.items():
            member = circuit.membership(self.arch, g).to(mask.logits.device)
            mask.logits.copy_(torch.where(member, logit, -logit))

    def save_masks(self, path: str | os.PathLike[str]) -> None:
        """Logits (and reference means) to safetensors, atomically; never pickle."""
        tensors = {
            f"logits.{g}": m.logits.detach().cpu().contiguous() for g, m in self.masks.items()
        }
        tensors.update({f"mean.{g}": v.cpu().contiguous() for g, v in self._means.items()})
        meta = {"format": MASKS_FORMAT, "settings": json.dumps(self.metadata())}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @torch.no_grad()
    def load_masks(self, path: str | os.PathLike[str]) -> None:
        """Read masks written by `save_masks`; refuse them if they were made for other shapes."""
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise SafeSeekError(f"{path}: no such masks file") from None
        except Exception as exc:  # safetensors raises its own error types
            raise SafeSeekError(f"{path}: not a safetensors file ({exc})") from None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("format") != MASKS_FORMAT:
            raise SafeSeekError(f"{path}: not a SafeSeek masks file")
        settings = json.loads(meta["settings"])
        diffs = self.arch.differences(settings["model"]["architecture"])
        if diffs:
            raise SafeSeekError(
                f"{path}: masks do not match the model (masks vs model): " + "; ".join(diffs)
            )
        if settings["parametrization"] != self.parametrization:
            raise SafeSeekError(
                f"{path}: masks are {settings['parametrization']!r}, this MaskedModel is "
                f"{self.parametrization!r}"
            )
        for g, mask in self.masks.items():
            if f"logits.{g}" not in tensors:
                raise SafeSeekError(f"{path}: has no {g} masks")
            mask.logits.copy_(tensors[f"logits.{g}"])
        means = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("mean.")}
        if means:
            self._means = {g: v.to(self._device) for g, v in means.items()}


def _input_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple | None:
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    return hook


def _output_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output)

    return hook


def _weight_hook(fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return fn(module, args[0], output)

    return hook


def _as_batches(
    reference: Iterable[Batch | str], tokenizer: Any, device: torch.device, batch_size: int = 8
) -> Iterator[dict[str, torch.Tensor]]:
    """Model-input batches on `device`, from batches or from prompts (tokenized here)."""
    items = list(reference)
    if not items:
        raise SafeSeekError("mean ablation needs at least one reference prompt")
    if isinstance(items[0], str):
        if tokenizer is None:
            raise SafeSeekError("reference prompts given as text need tokenizer=...")
        for i in range(0, len(items), batch_size):
            enc = tokenizer(items[i : i + batch_size], return_tensors="pt", padding=True)
            yield {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return
    for batch in items:
        yield {k: v.to(device) for k, v in batch.items()}
