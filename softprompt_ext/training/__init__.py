"""Training a prompt: the paper's recipe for the Trainer, the fast path, LM objectives and the LM-adaptation tool.

Public names are imported from `softprompt_ext` itself; the modules here are where they live.
"""
