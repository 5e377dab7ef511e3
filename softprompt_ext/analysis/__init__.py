"""Looking at prompts: nearest-token readout, similarity and retrieval, plots (paper section 7).

Public names are imported from `softprompt_ext` itself; the modules here are where they live.
"""
