"""Adapter files: the one strict reader, validation before PEFT loads, atomic saves, the model card, Hub push.

Public names are imported from `softprompt_ext` itself; the modules here are where they live.
"""
