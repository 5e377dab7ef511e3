"""Benchmarks of softprompt-ext against PEFT prompt tuning, LoRA and full fine-tuning (see run.py)."""
