"""Time and peak RAM of llama.cpp's f16 conversion of a Mistral-7B-v0.3-shaped model (random weights).

Conversion cost depends on the tensor shapes, not on the values, so random bf16 weights stand in for the real
checkpoint (the hub is not reachable here). The tokenizer is a SentencePiece model trained on the demo corpus; the
converter pads its vocabulary to the model's 32,768 entries as it does for any smaller tokenizer.

    python bench/convert_7b.py --out /tmp/convert7b     # needs ~30 GB of disk and a GPU or ~30 GB RAM to build

Prints the model build time, then the converter's wall time and its peak resident memory (the child process's
ru_maxrss), and the ratio of that peak to the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MISTRAL_7B_V03 = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1e6,
                      sliding_window=None, tie_word_embeddings=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/convert7b")
    parser.add_argument("--layers", type=int, default=32, help="fewer layers for a quick trial")
    args = parser.parse_args()
    from transformers import MistralConfig, MistralForCausalLM

    from raftune.chat import MISTRAL_CHAT_TEMPLATE
    from raftune.data.corpus import load_corpus
    from raftune.tiny import load_sp_tokenizer, train_tokenizer

    out = Path(args.out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    train_tokenizer([c.text for c in load_corpus(ROOT / "datasets" / "demo" / "corpus")], model_dir, 2000)
    tokenizer = load_sp_tokenizer(model_dir)
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(model_dir))
    config = MistralConfig(**{**MISTRAL_7B_V03, "num_hidden_layers": args.layers}, bos_token_id=1, eos_token_id=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(model_dir), max_shard_size="5GB")
    checkpoint_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    del model
    print(f"built and saved a {args.layers}-layer Mistral-7B-shaped model ({checkpoint_bytes / 2**30:.1f} GiB bf16) "
          f"in {time.time() - started:.0f} s")

    converter = ROOT / "convert" / "llama.cpp" / "convert_hf_to_gguf.py"
    gguf = out / "model-f16.gguf"
    started = time.time()
    done = subprocess.run([sys.executable, str(converter), str(model_dir), "--outfile", str(gguf), "--outtype", "f16"],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"conversion failed: {done.stderr[-2000:]}")
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
    result = {"layers": args.layers, "checkpoint_gib": round(checkpoint_bytes / 2**30, 2),
              "gguf_gib": round(gguf.stat().st_size / 2**30, 2), "convert_seconds": round(seconds, 1),
              "peak_rss_gib": round(peak / 2**30, 2), "peak_over_checkpoint": round(peak / checkpoint_bytes, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
