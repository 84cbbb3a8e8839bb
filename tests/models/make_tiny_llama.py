"""Generate a tiny Llama model for serving tests (never downloaded).

A byte-level BPE tokenizer of 512 tokens trained on a few sentences, a chat
template, and a 2-layer Llama with random (seeded) weights in bf16: about
260 KB. It produces nonsense, quickly; it exercises a real engine end to end.
Head dimension 64 (hidden 128 / 2 heads): the vLLM CPU attention kernel rejects 16.

Runs with the Python of a vLLM virtualenv (torch, transformers, tokenizers):

    python make_tiny_llama.py OUTPUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The enclave serves language models on private servers.",
    "Hello, how are you today? I am fine, thank you.",
    "Tokens flow from the gateway through the balancer to the engine.",
    "An auditor signs off when every request leaves a record.",
] * 50


def main(out: str) -> int:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = Path(out)
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        print(f"{target}: already there")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(target)

    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    # safetensors writes its file 0600; the engine runs as its own user and only reads.
    for path in target.iterdir():
        path.chmod(0o644)
    print(json.dumps({"path": str(target), "vocab": len(fast),
                      "bytes": sum(p.stat().st_size for p in target.iterdir())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
