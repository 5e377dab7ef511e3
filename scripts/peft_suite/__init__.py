"""Run PEFT's own prompt-tuning test cases (from the installed PEFT's sdist) against plain PEFT and softprompt-ext.

See CONTRIBUTING.md, "PEFT's own test suite". Entry point: `python scripts/peft_suite/run.py`.
"""
