"""Train a LoRA adapter with peft on CPU or GPU, a few minutes at most (notebook 08).

The loop is the plain one, written out so nothing is hidden: the chat template renders each
question and answer exactly as vLLM will render the request, only the answer's tokens (and the
end-of-turn token after them) count in the loss, and AdamW updates the adapter's low-rank
matrices while the base model stays frozen. The adapter is saved by peft
(``adapter_config.json`` + ``adapter_model.safetensors``), the format vLLM's ``LoRARequest`` and
``--lora-modules`` read.

The folder is built atomically and stamped with a fingerprint of its recipe (base model, data,
settings, library versions): asking again for the same adapter returns the stored one at once
(its ``training.json`` keeps the report), anything else trains afresh.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import CourseError
from ..model_build import cached_build
from .tasks import Example

REPORT_FILE = "training.json"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class AdapterRecipe:
    """What an adapter is trained with; every field is part of its fingerprint."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ATTENTION
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0


@dataclass
class TrainingReport:
    """What one training run did (stored as ``training.json`` beside the adapter)."""

    path: str
    rank: int
    targets: list[str]
    examples: int
    steps: int
    trainable_parameters: int
    base_parameters: int
    seconds: float
    device: str
    losses: list[float] = field(default_factory=list)

    def summary(self) -> str:
        share = 100 * self.trainable_parameters / self.base_parameters
        return (f"rank {self.rank} on {', '.join(self.targets)}: {self.trainable_parameters:,} trainable parameters "
                f"({share:.2f} % of {self.base_parameters:,}); {self.steps} steps on {self.examples} examples in "
                f"{self.seconds:.0f} s on {self.device}; loss {self.losses[0]:.2f} -> {self.losses[-1]:.2f}")


def _fingerprint(base_dir: Path, examples: Sequence[Example], recipe: AdapterRecipe) -> str:
    import peft
    import torch
    import transformers

    from ..model_build import STAMP_FILE
    stamp = base_dir / STAMP_FILE
    base = stamp.read_text() if stamp.is_file() else (base_dir / "config.json").read_text()
    text = json.dumps({"base": base, "examples": [asdict(e) for e in examples], "recipe": asdict(recipe),
                       "versions": [peft.__version__, torch.__version__, transformers.__version__]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tokenized(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: the chat-rendered question and answer; labels -100 on the prompt."""
    messages = [{"role": "user", "content": example.question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": example.answer}], tokenize=False)
    if not full.startswith(prompt):
        raise CourseError("The chat template renders the answer differently from the prompt vLLM would send: "
                          "training on it would teach the wrong thing.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return ids, [-100] * len(prompt_ids) + ids[len(prompt_ids):]


def _train_into(folder: Path, base_dir: Path, examples: Sequence[Example], recipe: AdapterRecipe,
                device: str) -> None:
    try:
        _train(folder, base_dir, examples, recipe, device)
    finally:   # the model and its optimizer go, even after an error: the card is vLLM's next
        import gc

        import torch
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def _train(folder: Path, base_dir: Path, examples: Sequence[Example], recipe: AdapterRecipe, device: str) -> None:
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # float32 on a CPU (bf16 matmuls are slow there); bf16 on a GPU, with activations recomputed in
    # the backward pass (gradient checkpointing), so a 7B model trains in 24 GB. peft keeps the
    # adapter's own weights in float32 either way.
    on_gpu = device.startswith("cuda")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16 if on_gpu else torch.float32).to(device)
    base_parameters = sum(p.numel() for p in model.parameters())
    if on_gpu:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = peft.LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(recipe.targets),
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate)
    rows = [tokenized(tokenizer, e) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(recipe.steps):
        batch = [rows[order[(step * recipe.batch_size + i) % len(rows)]] for i in range(recipe.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    seconds = time.perf_counter() - started
    model.save_pretrained(folder)
    report = TrainingReport(path="", rank=recipe.rank, targets=list(recipe.targets), examples=len(examples),
                            steps=recipe.steps, trainable_parameters=sum(p.numel() for p in trainable),
                            base_parameters=base_parameters, seconds=round(seconds, 1), device=device, losses=losses)
    (folder / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1) + "\n")


def train_adapter(base_dir: str | Path, examples: Sequence[Example], out_dir: str | Path,
                  recipe: AdapterRecipe = AdapterRecipe(), *, device: str = "cpu",
                  force: bool = False) -> TrainingReport:
    """Train (or find, already trained) the LoRA adapter of ``recipe`` on ``examples`` into ``out_dir``."""
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise CourseError(f"{base_dir} holds no model (no config.json): build or download the base model first "
                          "(settings.ensure_model()).")
    if not examples:
        raise CourseError("No training examples: an adapter needs at least one question and answer.")
    folder = cached_build(out_dir, _fingerprint(base_dir, examples, recipe),
                          lambda staging: _train_into(staging, base_dir, examples, recipe, device), force=force)
    report = TrainingReport(**json.loads((folder / REPORT_FILE).read_text()))
    report.path = str(folder)
    return report


def untrained_adapter(base_dir: str | Path, out_dir: str | Path, rank: int,
                      targets: Sequence[str] = ATTENTION) -> Path:
    """A LoRA adapter of ``rank`` as peft initialises one (B = 0: it changes nothing), for trying
    what a server does with a rank it was not sized for. Only the model's shapes are read (a model
    on PyTorch's ``meta`` device), so it takes a second for a 7B model too."""
    base_dir = Path(base_dir)

    def build(folder: Path) -> None:
        import peft
        import torch
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
        config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), task_type="CAUSAL_LM")
        shapes = peft.get_peft_model_state_dict(peft.get_peft_model(model, config))
        generator = torch.Generator().manual_seed(0)
        save_file({name: torch.zeros(t.shape) if "lora_B" in name else torch.randn(t.shape, generator=generator) / rank
                   for name, t in shapes.items()}, str(folder / "adapter_model.safetensors"))
        config.base_model_name_or_path = str(base_dir)
        config.save_pretrained(folder)

    recipe = f"untrained-r{rank}-{','.join(targets)}-{(base_dir / 'config.json').read_text()}"
    return cached_build(out_dir, hashlib.sha256(recipe.encode()).hexdigest(), build)
