"""Running prompted models: one label scorer, mixed-task batches, ensembles, rank classification, generation.

Public names are imported from `softprompt_ext` itself; the modules here are where they live.
"""
