"""Tasks as text-to-text (paper section 3): the base classes, GLUE, SuperGLUE, QA, WordNet supersenses, metrics, transfer.

Public names are imported from `softprompt_ext` itself; the modules here are where they live.
"""
