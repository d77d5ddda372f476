"""LoRA adapters for the course's models: teaching tasks, a trainer, serving, and their cost (notebook 08)."""

from .cost import CostRow, adapter_cost, cost_table
from .serving import RUNTIME_LORA_ENV, load_adapter, lora_server_args, reasoning_parser_for, unload_adapter
from .tasks import TASKS, Example, follows_card, follows_think, held_out, held_out_sums, last_number, split_think, training_examples
from .train import AdapterRecipe, TrainingReport, train_adapter, untrained_adapter

__all__ = ["CostRow", "adapter_cost", "cost_table", "RUNTIME_LORA_ENV", "load_adapter", "lora_server_args",
           "reasoning_parser_for", "unload_adapter", "TASKS", "Example", "follows_card", "follows_think", "held_out", "held_out_sums",
           "last_number", "split_think", "training_examples", "AdapterRecipe", "TrainingReport", "train_adapter",
           "untrained_adapter"]
