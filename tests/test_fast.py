"""raftune.fast: packing isolates examples, batches keep every example once, the levers change speed, not learning."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from raftune import fast
from raftune.sft_data import MaskedCollator

from conftest import ROOT, mini_config


def _tiny_lm(seed=0):
    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None)
    return MistralForCausalLM(config).eval()


def _examples(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 120, (n,), generator=gen).tolist(),
             "completion_mask": [0] * (n // 2) + [1] * (n - n // 2)} for n in lengths]


def test_packed_example_logits_equal_its_logits_alone():
    model = _tiny_lm()
    examples = _examples([7, 19, 5, 12])
    batch = fast.Collator(0, packing=True)(examples)
    assert batch["position_ids"][0].tolist() == [i for e in examples for i in range(len(e["input_ids"]))]
    model.set_attn_implementation(fast.register_packed_attention())
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
        # the same row with plain causal attention over the whole row: later examples see earlier ones
        leaky = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    assert torch.allclose(packed, alone, atol=1e-5)
    first = len(examples[0]["input_ids"])
    assert torch.allclose(leaky[:first], alone[:first], atol=1e-5) and not torch.allclose(leaky, alone, atol=1e-2)


def test_packed_loss_and_gradients_equal_padded_batch():
    """One packed row and the seed's padded batch of the same examples: same loss over the same label tokens, same
    gradients; so packing cannot change what a step learns."""
    examples = _examples([9, 23, 14])
    losses, grads = [], []
    for packing in (False, True):
        model = _tiny_lm()
        if packing:
            model.set_attn_implementation(fast.register_packed_attention())
        batch = fast.Collator(0, packing=packing)(examples)
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    padded = MaskedCollator(0)(examples)
    assert (padded["labels"][:, 1:] != -100).sum() == (fast.Collator(0, True)(examples)["labels"] != -100).sum()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_completion_logits_give_the_same_loss_and_gradients_from_the_labelled_positions_only(packing):
    """fast.completion_logits: lm_head only where a label is; loss and gradients equal the full-logits forward's,
    padded or packed, and the logits returned are one row per label."""
    examples = _examples([9, 23, 14])
    batch = fast.Collator(0, packing=packing)(examples)
    results = []
    for lever in (False, True):
        model = _tiny_lm()
        if packing:
            model.set_attn_implementation(fast.register_packed_attention())
        if lever:
            model.forward = fast._completion_logits_forward.__get__(model)
        out = model(**batch)
        out.loss.backward()
        results.append((out.loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]), out.logits.shape))
    labels = int((batch["labels"][:, 1:] != -100).sum())
    assert tuple(results[1][2]) == (labels, 120) and results[0][2][0] * results[0][2][1] > labels
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_collator_labels_mask_prompts_and_first_tokens_and_unrolls_groups():
    examples = _examples([6, 8])
    batch = fast.Collator(0, packing=True)(examples)
    labels = batch["labels"][0].tolist()
    assert labels[:6] == [-100, -100, -100, *examples[0]["input_ids"][3:]]
    assert labels[6] == -100  # example 2's first token is never predicted from example 1's last
    grouped = {"input_ids": [e["input_ids"] for e in examples], "completion_mask": [e["completion_mask"] for e in examples]}
    assert torch.equal(fast.Collator(0, packing=True)([grouped])["input_ids"], batch["input_ids"])
    whole = fast.Collator(0, packing=True, completion_only=False)(examples)["labels"][0].tolist()
    assert whole == [-100, *examples[0]["input_ids"][1:], -100, *examples[1]["input_ids"][1:]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 6, 14] and batch["max_length_q"] == 8


@pytest.mark.parametrize("packing", [True, False])
def test_token_budget_batches_keep_every_example_once_within_budget(packing):
    lengths = [700 + (i * 397) % 1349 for i in range(200)]
    batches = fast.group_by_budget(lengths, 8192, packing, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(200))
    cost = (lambda b: sum(lengths[i] for i in b)) if packing else (lambda b: max(lengths[i] for i in b) * len(b))
    assert all(cost(b) <= 8192 for b in batches)
    assert sum(cost(b) > 6000 for b in batches) > len(batches) * 0.6  # batches are filled, not one row each
    assert fast.group_by_budget([5000, 10, 20], 1000, packing) and max(map(len, fast.group_by_budget([5000], 1000, packing))) == 1


def test_fused_lora_matches_peft_forward_and_backward():
    from peft import LoraConfig, get_peft_model

    x = torch.randn(2, 11, 64)
    outs = []
    for fused in (False, True):
        model = get_peft_model(_tiny_lm(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["q_proj", "v_proj", "down_proj"]))
        torch.manual_seed(1)
        for name, p in model.named_parameters():  # B starts at zero; make the adapter matter
            if "lora_B" in name:
                p.data.normal_()
        if fused:
            assert fast._fuse_lora(model) == 6
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs_embeds=x).logits
        out.float().sum().backward()
        outs.append((out.float(), [p.grad.float() for n, p in sorted(model.named_parameters()) if "lora_" in n]))
    (ref, ref_grads), (got, got_grads) = outs
    assert (got - ref).norm() < 2e-2 * ref.norm()
    assert all((g - r).norm() < 3e-2 * r.norm() for g, r in zip(got_grads, ref_grads))


def test_fused_lora_with_dropout_trains_as_peft_does():
    """With LoRA dropout on, the fused product draws the same masks as peft's path (same seed, same order) and gives
    the same loss and adapter gradients in training mode."""
    from peft import LoraConfig, get_peft_model

    x = torch.randn(2, 11, 64)
    outs = []
    for fused in (False, True):
        model = get_peft_model(_tiny_lm(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.3,
                                                     target_modules=["q_proj", "v_proj", "down_proj"]))
        model.train()
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(generator=torch.Generator().manual_seed(len(name)))
        if fused:
            fast._fuse_lora(model)
        torch.manual_seed(5)  # the dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs_embeds=x).logits
        out.float().sum().backward()
        outs.append((out.float(), [p.grad.float() for n, p in sorted(model.named_parameters()) if "lora_" in n]))
    (ref, ref_grads), (got, got_grads) = outs
    assert not torch.allclose(ref, _tiny_lm()(inputs_embeds=x).logits, atol=1e-2)  # the adapter and dropout matter
    assert (got - ref).norm() < 2e-2 * ref.norm()
    assert all((g - r).norm() < 3e-2 * r.norm() for g, r in zip(got_grads, ref_grads))


def test_fused_lora_on_a_4bit_layer_matches_peft():
    """On a bitsandbytes NF4 layer without dropout the fused node computes both products and adds the input
    gradients in place: the same output, input gradient and adapter gradients as peft's LoRA layer over bitsandbytes."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            dense = torch.nn.Linear(64, 48, bias=False)
            self.q_proj = bnb.nn.Linear4bit(64, 48, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
            self.q_proj.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
            self.q_proj.to("cpu")

        def forward(self, x):
            return self.q_proj(x)

    x0 = torch.randn(3, 7, 64, dtype=torch.bfloat16)
    outs = []
    for fused in (False, True):
        model = get_peft_model(Block(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(generator=torch.Generator().manual_seed(3))
        if fused:
            assert fast._fuse_lora(model) == 1
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        outs.append([out.float(), x.grad.float(),
                     *[p.grad.float() for n, p in sorted(model.named_parameters()) if "lora_" in n]])
    for ref, got in zip(*outs):
        assert (got - ref).norm() <= 2e-2 * ref.norm()


def test_gpu_levers_fall_back_with_one_line_each_and_fast_training_runs(tmp_path, tiny_cache, capsys):
    """`raftune train` with every lever on, on a machine without CUDA: liger and bf16_frozen each warn once, the
    other levers are on, and training runs to the end with a falling loss."""
    from raftune.data import stage as data_stage
    from raftune import train

    config = mini_config(tmp_path, "fast.packing=true", "fast.tokens_per_batch=1200", "fast.liger=true",
                         "fast.checkpoint_layers=1", "fast.bf16_frozen=true",
                         "fast.fused_lora=true", "sft.num_train_epochs=3", "sft.logging_steps=1",
                         "train.sample_prompts=1", "train.sample_max_new_tokens=4")
    data_stage.run(config)
    train.run(config)
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert out.count("fast: liger: needs CUDA") == 1 and out.count("fast: bf16_frozen: needs CUDA") == 1
    assert "'packing': True" in out and "'checkpoint_layers': 1" in out and "'fused_lora':" in out
    losses = [r["loss"] for r in map(json.loads, (config.stage_dir("train") / "loss.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) >= 4 and losses[-1] < losses[0]


def test_fast_recipe_learns_like_the_seed_recipe(tmp_path, tiny_cache):
    """The bench's parity check on the mini corpus: the seed's padded micro-batches with gradient accumulation and
    the fast recipe's packed steps, same examples per step, give loss curves within 2% of each other."""
    sys.path.insert(0, str(ROOT / "bench"))
    import train_throughput as bench

    from raftune.data import stage as data_stage

    config = mini_config(tmp_path)
    data_stage.run(config)
    result = bench.parity_curves(config, steps=12, tokens_per_step=900)
    assert len(result["seed"]) == len(result["fast"]) == 12
    assert result["seed"][-1] < result["seed"][0]  # it learns, so a difference would show
    assert result["max_rel_diff"] <= 0.02, result


def test_bench_tiny_prints_the_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--tiny", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    names = [r["recipe"] for r in rows]
    assert names[0] == "seed" and {"fast", "memory"} <= set(names) and any(n.startswith("seed+") for n in names)
    assert all(r["tokens_per_s"] > 0 and r["loss_last"] > 0 for r in rows)
    assert "| recipe | real tokens/s | peak GiB | MFU | last loss |" in proc.stdout
    assert "fast / seed real tokens/s:" in proc.stdout.splitlines()[-1]


def test_fused_lora_takes_peft_path_when_lora_b_is_wrapped():
    """Under FSDP lora_B is a wrapper whose weight is a shard outside its forward: the fused forward must call it."""
    from peft import LoraConfig, get_peft_model

    class Wrapper(torch.nn.Module):  # stands in for FSDP's wrapper: only its forward gives the full weight
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x = torch.randn(2, 5, 64)
    outs = []
    for fused in (False, True):
        model = get_peft_model(_tiny_lm(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"]))
        for module in model.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                torch.nn.init.normal_(module.lora_B["default"].weight)
                module.lora_B["default"] = Wrapper(module.lora_B["default"])
        if fused:
            fast._fuse_lora(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(model(inputs_embeds=x).logits.float())
    assert torch.allclose(outs[0], outs[1])


def test_bench_fast_quality_tiny_compares_held_out_losses(tmp_path):
    """bench/fast_quality.py on the CPU: two recipes trained through `raftune train`, each with its held-out loss
    and the comparison line against the seed recipe."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fast_quality.py"), "--tiny", "--recipes", "seed",
                           "fast", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "quality.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["seed", "fast"]
    assert all(r["heldout_loss"] > 0 and r["steps"] > 0 for r in rows)
    assert rows[0]["steps"] > rows[1]["steps"]  # the fast recipe's steps are larger, so fewer
    assert "fast held-out loss vs seed:" in proc.stdout.splitlines()[-1]
