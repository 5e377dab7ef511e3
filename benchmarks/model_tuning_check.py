"""Model-tuning sanity check at another learning rate: `python benchmarks/model_tuning_check.py BASE LR STEPS`.

Runs `quality_runs.run` for full fine-tuning (method "model") with AdamW at LR instead of 1e-3, batch 16,
dev checked every 100 steps; prints test accuracy, first-label-token accuracy and the dev curve.
"""

import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import quality_runs as q  # noqa: E402

torch.set_num_threads(1)
base, lr, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
r = q.run(q.RunSpec(method="model", base=base), steps=steps, batch_size=16, eval_every=100, dev_size=96, model_lr=lr)
curve = [(c["step"], round(c["dev_accuracy"], 3), round(c.get("train_loss", 0), 2)) for c in r["dev_curve"]]
print(base, lr, "test", r["test_accuracy"], "label-token", r["test_label_token_accuracy"], "curve", curve)
