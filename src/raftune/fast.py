"""raftune's GPU recipe: the levers that make QLoRA training faster without changing what it learns.

Each lever is a key of the recipe's `fast:` section (`config.FastConfig`), off by default, and each one can be switched
alone (bench/train_throughput.py measures them one at a time):

  packing            padding-free batches: the examples of a batch laid end to end in one row, position ids restarting
                     at every example. Attention runs per example (`packed_attention`), so no token sees another
                     example; the first token of each example is no label, so no example predicts the next one.
  tokens_per_batch   a token budget instead of a fixed number of examples: consecutive examples (in a seeded shuffle)
                     are grouped while they fit (padded size when packing is off, real tokens when it is on).
  liger              Liger's Triton kernels: RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy that never
                     materialises the logits (CUDA with liger-kernel installed).
  checkpoint_layers  selective activation checkpointing: only the first N decoder layers recompute their activations;
                     None leaves it to `sft.activation_checkpointing` (every layer or none).
  offload_checkpoints  the recomputed layers' inputs kept in pinned host memory, not on the GPU, until the backward
                     pass (CUDA): a layer's input per token less for each recomputed layer.
  bf16_frozen        keep the frozen norms, embeddings and lm_head in bf16; peft's prepare_model_for_kbit_training
                     casts them to fp32, which makes the whole residual stream (and every saved activation) fp32
                     (CUDA: bf16 arithmetic is slow on most CPUs).
  fused_lora         each LoRA layer adds its low-rank product in the GEMM's epilogue (addmm) instead of peft's
                     separate clone, scale and add passes over the layer's full-width output; same arithmetic.
  completion_logits  lm_head and the loss only at the positions that have a label: with completion-only loss on
                     RAFT rows most positions are prompt, and a small model's vocabulary projection (SmolLM2: 576 x
                     49,152) is a fifth of its weights; same loss, computed from the same hidden states.

GPU-only levers fall back on a machine without CUDA with one warning line each, never an error.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from raftune.models import fsdp_checkpointing, under_fsdp
from raftune.sft_data import MaskedCollator

PACKED_ATTENTION = "raftune_packed"
# Liger is Triton (CUDA); bf16 arithmetic is slow on most CPUs; offloading overlaps copies on a CUDA stream
GPU_LEVERS = ("liger", "bf16_frozen", "offload_checkpoints")


def enabled(fast) -> bool:
    """Whether any lever is on: then `raftune train` uses this module's batches and collator."""
    return any(bool(v) or (k == "checkpoint_layers" and v is not None) for k, v in dataclasses.asdict(fast).items()
               if k not in ("pick", "memory_budget_gib"))


def _warn(message: str) -> None:
    print(f"fast: {message}")


# ---------------------------------------------------------------------------------------------------- batches


def group_by_budget(lengths: list[int], budget: int, packing: bool, seed: int = 0) -> list[list[int]]:
    """Indices of examples grouped into batches of at most `budget` tokens, in a seeded shuffled order.

    With packing a batch costs the sum of its lengths; without, its padded size (longest example x examples). An
    example longer than the budget gets a batch of its own rather than being cut."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches, current = [], []
    for index in order:
        candidate = current + [index]
        cost = (sum(lengths[i] for i in candidate) if packing
                else max(lengths[i] for i in candidate) * len(candidate))
        if current and cost > budget:
            batches.append(current)
            candidate = [index]
        current = candidate
    if current:
        batches.append(current)
    return batches


def grouped_dataset(dataset, fast, seed: int = 0):
    """For `transformers.Trainer` (batch size 1): one row per token-budget batch, each holding its examples' lists."""
    from datasets import Dataset

    lengths = [len(ids) for ids in dataset["input_ids"]]
    groups = group_by_budget(lengths, fast.tokens_per_batch, fast.packing, seed)
    columns = {c: dataset[c] for c in ("input_ids", "completion_mask") if c in dataset.column_names}
    return Dataset.from_dict({c: [[values[i] for i in group] for group in groups] for c, values in columns.items()})


class Collator:
    """Batches for both recipes. Labels are the input ids where the completion mask is 1 (everywhere when
    `completion_only` is off), -100 elsewhere; a row of the grouped dataset (lists of examples) is unrolled first.

    packing=False: right-padded rows with an attention mask, exactly as `sft_data.MaskedCollator`.
    packing=True: one row of all examples, `position_ids` restarting at 0 for each, and the flash-attention style
    `cu_seq_lens_*` / `max_length_*` that transformers passes on to the attention function; no padding at all."""

    def __init__(self, pad_token_id: int, packing: bool, completion_only: bool = True):
        self.pad_token_id, self.packing, self.completion_only = pad_token_id, packing, completion_only

    def _examples(self, features: list[dict]) -> list[dict]:
        examples = []
        for f in features:
            mask = f.get("completion_mask")
            if f["input_ids"] and isinstance(f["input_ids"][0], list):  # a grouped row: several examples
                masks = mask if mask is not None else [None] * len(f["input_ids"])
                examples += [{"input_ids": ids, "completion_mask": m} for ids, m in zip(f["input_ids"], masks)]
            else:
                examples.append({"input_ids": f["input_ids"], "completion_mask": mask})
        for e in examples:
            if not self.completion_only or e["completion_mask"] is None:
                e["completion_mask"] = [1] * len(e["input_ids"])
        return examples

    def __call__(self, features: list[dict]) -> dict:
        examples = self._examples(features)
        if not self.packing:
            return MaskedCollator(self.pad_token_id)(examples)
        ids, labels, positions, starts = [], [], [], [0]
        for e in examples:
            n = len(e["input_ids"])
            ids += list(e["input_ids"])
            # the first token is never a target: in a padded row nothing precedes it; packed, the previous
            # example's last token would otherwise learn to predict it
            labels += [-100] + [t if m else -100 for t, m in zip(e["input_ids"][1:], e["completion_mask"][1:])]
            positions += range(n)
            starts.append(starts[-1] + n)
        cu = torch.tensor(starts, dtype=torch.int32)
        longest = max(len(e["input_ids"]) for e in examples)
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
                "max_length_q": longest, "max_length_k": longest}


# -------------------------------------------------------------------------------------------------- attention


_host_bounds: tuple = (None, None)  # (tensor, list): cu_seq_lens as Python ints, read once per forward, not per layer


def _bounds(cu: torch.Tensor) -> list[int]:
    global _host_bounds
    if _host_bounds[0] is not cu:
        _host_bounds = (cu, cu.tolist())
    return _host_bounds[1]


def _varlen_call():
    """torch's own variable-length flash attention (torch >= 2.10, CUDA), adapted to the signature this torch has,
    or None. Its signature changed between releases (is_causal, later window_size; GQA later still)."""
    try:
        import inspect

        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = set(inspect.signature(varlen_attn).parameters)
    if not ({"window_size", "is_causal"} & params):
        return None

    def call(q, k, v, cu, longest, scale):  # q, k, v: (tokens, heads, head_dim)
        kwargs = {"scale": scale} if "scale" in params else {}
        if q.shape[1] != k.shape[1]:
            if "enable_gqa" in params:
                kwargs["enable_gqa"] = True
            else:
                k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        kwargs.update({"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True})
        return varlen_attn(q, k, v, cu, cu, longest, longest, **kwargs)

    return call


_varlen_checked: dict = {}


def _varlen():
    """The varlen call, once it matched per-example SDPA (values and gradients) on this device; else None, and the
    per-example loop is used. Checked once, when the packed attention is registered: never inside a forward, where
    a checkpointed layer would see the check's own autograd work."""
    if "call" not in _varlen_checked:
        call, reason = _varlen_call(), "not in this torch"
        if call is not None and torch.cuda.is_available():
            try:
                reason = _check_varlen(call)
            except Exception as err:  # an older kernel without backward, a missing build: use the loop
                reason = f"{type(err).__name__}: {str(err)[:80]}"
        _varlen_checked["call"] = call if reason is None else None
        if reason is not None and torch.cuda.is_available():
            _warn(f"packing: torch varlen attention unusable ({reason}); one SDPA call per example")
    return _varlen_checked["call"]


def _check_varlen(call) -> str | None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    lengths, heads, kv, dim = [37, 300, 129], 8, 2, 64
    q, k, v = (torch.randn(sum(lengths), h, dim, device="cuda", dtype=torch.bfloat16, generator=gen,
                           requires_grad=True) for h in (heads, kv, kv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    out = call(q, k, v, cu, max(lengths), dim ** -0.5)
    ref = _per_example(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], cu.tolist(),
                       dim ** -0.5)[0]
    grad = torch.randn_like(out)
    got, want = torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in ((out, ref), *zip(got, want)):
        if (a.float() - b.float()).norm() > 2e-2 * b.float().norm():
            return "differs from per-example SDPA"
    return None


def _per_example(query, key, value, bounds: list[int], scaling):
    """One causal SDPA per example (flash or memory-efficient kernels on CUDA: cuDNN's would build a new graph for
    every new length). (1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    outs = []
    with sdpa_kernel(backends):
        for a, b in zip(bounds[:-1], bounds[1:]):
            k, v = key[:, :, a:b], value[:, :, a:b]
            groups = query.shape[1] // key.shape[1]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(query[:, :, a:b], k, v, is_causal=True,
                                                                   scale=scaling)
            outs.append(out.transpose(1, 2))
    return torch.cat(outs, dim=1)


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     sliding_window=None, cu_seq_lens_q=None, **kwargs):
    """Attention within each packed example. query/key/value: (1, heads, tokens, head_dim), as transformers hands
    them over. Without `cu_seq_lens_q` (a padded batch, generation) this is plain SDPA with the mask given."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if sliding_window is not None and kwargs.get("max_length_q", 0) > sliding_window:
        raise ValueError(f"packed attention has no sliding window; examples must be <= {sliding_window} tokens")
    varlen = _varlen_checked.get("call") if query.is_cuda else None
    if varlen is not None:
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
        if torch.is_autocast_enabled("cuda"):  # autocast casts SDPA's inputs, not this custom op's
            q, k, v = (t.to(torch.get_autocast_dtype("cuda")) for t in (q, k, v))
        if q.dtype in (torch.float16, torch.bfloat16):  # flash kernels only; fp32 takes the loop below
            longest = kwargs.get("max_length_q") or int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
            return varlen(q, k, v, cu_seq_lens_q, longest, scaling).unsqueeze(0), None
    # portable path: one causal SDPA call per example (CPU, or a torch whose varlen kernel is unusable)
    return _per_example(query, key, value, _bounds(cu_seq_lens_q), scaling), None


def _packed_mask(*args, **kwargs):
    """Mask builder for the packed attention: none when there is no padding (the examples' bounds come with the
    batch), else SDPA's own mask."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


def register_packed_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)
    if torch.cuda.is_available():
        with torch.enable_grad(), torch.autocast("cuda", enabled=False):
            _varlen()
    return PACKED_ATTENTION


# ----------------------------------------------------------------------------------------------- model levers


def _decoder(model):
    """The transformers causal LM inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class _HostOffload:
    """Saved-tensor hooks that keep a checkpointed layer's input in pinned host memory until the backward pass needs
    it. The copy to the host runs on a side stream, so the GPU does not wait for it; the copy back precedes the
    layer's recomputation, which needs the input anyway."""

    def __init__(self):
        self.stream = torch.cuda.Stream()

    def pack(self, tensor):
        if not tensor.is_cuda or tensor.numel() < 2**16:  # the layer's small inputs stay where they are
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
        tensor.record_stream(self.stream)  # its memory is not reused before the copy has read it
        return tensor.device, host, self.stream.record_event()

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host, copied = packed
        torch.cuda.current_stream().wait_event(copied)
        return host.to(device, non_blocking=True)

    def wrap(self, checkpoint):
        def offloaded(*args, **kwargs):
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                return checkpoint(*args, **kwargs)
        return offloaded


def set_checkpointing(model, layers: int, offload: bool = False) -> None:
    """Recompute the activations of the first `layers` decoder layers in the backward pass (non-reentrant); keep the
    rest. 0 turns checkpointing off. `offload`: the recomputed layers' inputs wait in host memory (CUDA)."""
    lm = _decoder(model)
    decoder_layers = lm.model.layers
    if layers <= 0:
        (getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable)()
        return
    enable = getattr(lm, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.20
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hooks = _HostOffload() if offload else None
    for index, layer in enumerate(decoder_layers):
        layer.gradient_checkpointing = index < layers
        if hooks and layer.gradient_checkpointing:
            layer._gradient_checkpointing_func = hooks.wrap(layer._gradient_checkpointing_func)
    lm.config.use_cache = False


def checkpoint_layers(config, num_layers: int) -> int:
    """Decoder layers this process recomputes: none under FSDP's own checkpointing, which recomputes them all."""
    fast = config.fast
    if fsdp_checkpointing():
        return 0
    if fast.checkpoint_layers is not None:
        return max(0, min(int(fast.checkpoint_layers), num_layers))
    return num_layers if config.sft.get("activation_checkpointing", False) else 0


def _cast_frozen_bf16(model) -> None:
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and param.__class__.__name__ != "Params4bit":
            param.data = param.data.to(torch.bfloat16)


def _apply_liger(model, config) -> bool:
    lm = _decoder(model)
    if lm.config.model_type not in ("mistral", "llama"):
        _warn(f"liger: no Liger patch wired for model type {lm.config.model_type}; skipped")
        return False
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_mistral
    except Exception as err:  # not installed, or incompatible with this transformers
        _warn(f"liger: liger-kernel not usable here ({type(err).__name__}: {str(err)[:80]}); using the plain kernels")
        return False
    # A LoRA adapter on lm_head would be bypassed by the fused loss, which reads lm_head.weight directly.
    fused_ce = "lm_head" not in (config.lora.get("target_modules") or [])
    apply = apply_liger_kernel_to_mistral if lm.config.model_type == "mistral" else apply_liger_kernel_to_llama
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=fused_ce, model=lm)
    return True


class _LoraProduct(torch.autograd.Function):
    """result + scale * (x @ A^T) @ B^T with the last product added in addmm's epilogue; x is the adapter's input
    after its dropout. Kept for the backward pass: x (the frozen layer keeps it too when there is no dropout) and
    the rank-r product, nothing of the output's width."""

    @staticmethod
    def forward(ctx, result, x, a_weight, b_weight, scale: float):
        a = x @ a_weight.t().to(x.dtype)
        out = torch.addmm(result.reshape(-1, result.shape[-1]), a.reshape(-1, a.shape[-1]),
                          b_weight.t().to(x.dtype), alpha=scale)
        ctx.save_for_backward(x, a, a_weight, b_weight)
        ctx.scale = scale
        return out.view(result.shape)

    @staticmethod
    def backward(ctx, grad):
        x, a, a_weight, b_weight = ctx.saved_tensors
        grad2, a2 = grad.reshape(-1, grad.shape[-1]), a.reshape(-1, a.shape[-1])
        grad_b = ctx.scale * (grad2.t() @ a2)
        grad_a_out = ctx.scale * (grad2 @ b_weight.to(grad.dtype))  # d loss / d (x @ A^T)
        grad_a = grad_a_out.t() @ x.reshape(-1, x.shape[-1])
        grad_x = (grad_a_out @ a_weight.to(grad.dtype)).view(x.shape)
        return grad, grad_x, grad_a.to(a_weight.dtype), grad_b.to(b_weight.dtype), None


class _Lora4bitProduct(torch.autograd.Function):
    """x @ W^T + scale * (x @ A^T) @ B^T for a bitsandbytes 4-bit W, both products in one node. The backward pass
    adds the adapter's input gradient into the frozen layer's in place (addmm_) instead of autograd adding two
    full-width gradients of the same input; W is dequantised as bitsandbytes does, once a pass."""

    @staticmethod
    def forward(ctx, x, weight, a_weight, b_weight, scale: float):
        x2 = x.reshape(-1, x.shape[-1])
        a = x2 @ a_weight.t().to(x.dtype)
        out = x2 @ _dequantized(weight, x.dtype).t()
        out.addmm_(a, b_weight.t().to(x.dtype), alpha=scale)
        ctx.save_for_backward(x, a, a_weight, b_weight)
        ctx.weight, ctx.scale = weight, scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, a, a_weight, b_weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_b = ctx.scale * (grad2.t() @ a)
        grad_a_out = ctx.scale * (grad2 @ b_weight.to(grad.dtype))  # d loss / d (x @ A^T)
        grad_a = grad_a_out.t() @ x.reshape(-1, x.shape[-1])
        grad_x = grad2 @ _dequantized(ctx.weight, grad.dtype)
        grad_x.addmm_(grad_a_out, a_weight.to(grad.dtype))
        return grad_x.view(x.shape), None, grad_a.to(a_weight.dtype), grad_b.to(b_weight.dtype), None


def _dequantized(weight, dtype) -> torch.Tensor:
    import bitsandbytes as bnb

    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(dtype)


def _plain_4bit(layer) -> bool:
    """A bitsandbytes 4-bit linear layer without bias, its weight whole (not an FSDP shard)."""
    weight = getattr(layer, "weight", None)
    return (type(weight).__name__ == "Params4bit" and getattr(weight, "quant_state", None) is not None
            and getattr(layer, "bias", None) is None and not under_fsdp())


def _fused_lora_forward(self, x, *args, **kwargs):
    """peft's LoRA forward, base(x) + scaling * B(A(dropout(x))), with the adapter's product added inside the
    second GEMM (`_LoraProduct`) instead of peft's clone, multiply and add passes over the full-width output.
    Anything but one plain adapter under autocast (merged, disabled, a variant such as DoRA) takes peft's path."""
    names = self.active_adapters
    # Under FSDP lora_A/lora_B are wrapped and their weights are shards outside their own forward: peft's path.
    if (args or kwargs or self.disable_adapters or self.merged or len(names) != 1 or names[0] not in self.lora_A
            or names[0] in getattr(self, "lora_variant", {}) or not torch.is_autocast_enabled(x.device.type)
            or type(self.lora_A[names[0]]) is not torch.nn.Linear
            or type(self.lora_B[names[0]]) is not torch.nn.Linear):
        return type(self).forward(self, x, *args, **kwargs)
    name = names[0]
    x = x.to(torch.get_autocast_dtype(x.device.type))  # one copy in the compute dtype, kept for both products
    a_weight, b_weight, scale = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
    if isinstance(self.lora_dropout[name], torch.nn.Identity) and _plain_4bit(self.base_layer):
        return _Lora4bitProduct.apply(x, self.base_layer.weight, a_weight, b_weight, scale)
    return _LoraProduct.apply(self.base_layer(x), self.lora_dropout[name](x), a_weight, b_weight, scale)


def _fuse_lora(model) -> int:
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]
    for module in layers:
        module.forward = _fused_lora_forward.__get__(module)
    return len(layers)


def _completion_logits_forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None,
                               num_items_in_batch=None, **kwargs):
    """The causal LM's forward with labels, projecting only the hidden states whose next token is a label. The loss
    is transformers' (labels shifted by one, summed, divided by `num_items_in_batch` when the Trainer gives it, else
    averaged); the returned logits are those of the labelled positions only, [labels, vocabulary]."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if labels is None:  # generation, evaluation without labels: the model's own forward
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  **kwargs)
    hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        **kwargs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = self.lm_head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    loss = loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
    return CausalLMOutputWithPast(loss=loss, logits=logits)


def apply(model, config) -> dict:
    """Switch on the recipe's levers on a peft model; returns which ones are really on (GPU-only ones fall back)."""
    fast = config.fast
    cuda = next(model.parameters()).is_cuda or torch.cuda.is_available()
    lm = _decoder(model)
    active = {}
    layers = checkpoint_layers(config, len(lm.model.layers))
    offload = bool(fast.offload_checkpoints and layers and cuda)
    set_checkpointing(model, layers, offload)
    active["checkpoint_layers"] = layers
    if offload:
        active["offload_checkpoints"] = True
    if fast.packing:
        lm.set_attn_implementation(register_packed_attention())
        active["packing"] = True
    if fast.tokens_per_batch:
        active["tokens_per_batch"] = fast.tokens_per_batch
    if fast.fused_lora:
        active["fused_lora"] = _fuse_lora(model)
    if fast.completion_logits:
        lm.forward = _completion_logits_forward.__get__(lm)
        active["completion_logits"] = True
    for lever in GPU_LEVERS:
        if getattr(fast, lever) and not cuda:
            _warn(f"{lever}: needs CUDA, none here; continuing without it")
    if fast.bf16_frozen and cuda:
        _cast_frozen_bf16(model)
        active["bf16_frozen"] = True
    if fast.liger and cuda:
        active["liger"] = _apply_liger(model, config)
    return active
