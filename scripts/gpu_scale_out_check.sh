#!/usr/bin/env bash
# Every GPU/NCCL check of the scale-out work (FSDP, DeepSpeed ZeRO-3) and of DDP in one run, <= ~8 minutes.
#
#   bash scripts/gpu_scale_out_check.sh            # from the repository root, in the project's venv
#
# Needs CUDA; the 2-process entries need 2+ GPUs (they skip with the reason on one). Writes everything under
# ${OUT:-gpu_scale_out_out}/ : pytest's junit XML and log, and the logs of the accelerate FSDP launch.
set -uo pipefail
OUT="${OUT:-gpu_scale_out_out}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false HF_HOME="$OUT/hf_home"
status=0
nvidia-smi -L | tee "$OUT/gpus.txt" || { echo "no nvidia-smi: not a GPU machine"; exit 2; }
python -c "import torch, accelerate, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'accelerate', accelerate.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" \
  | tee "$OUT/versions.txt"
python -c "import deepspeed; print('deepspeed', deepspeed.__version__)" >> "$OUT/versions.txt" 2>&1 || true

# 1. pytest: the gpu-marked entries (FSDP1/FSDP2 over NCCL vs one process, DDP over NCCL, ZeRO-3), ~4 min
timeout 330 python -m pytest -q -rs -m gpu tests/test_fsdp.py tests/test_distributed.py \
  --junitxml "$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.log" || status=1

# 2. the shipped accelerate config through the stock Trainer script (tests/scripts/ddp_train.py), ~1-2 min
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
procs=$(( gpus >= 2 ? 2 : 1 ))
# the prompt out of the shards as the config file says, its gradient averaged by PromptGradSyncCallback
FSDP_IGNORED_MODULES='(.*\.)?prompt_encoder' \
timeout 150 python -m accelerate.commands.launch --config_file examples/accelerate/fsdp.yaml \
  --num_processes "$procs" --mixed_precision no --main_process_port 29677 \
  tests/scripts/ddp_train.py --output_dir "$OUT/accelerate_fsdp" --max_steps 6 --sync_prompt_grads \
  > "$OUT/accelerate_fsdp.log" 2>&1 || status=1
python - "$OUT/accelerate_fsdp" "$procs" <<'PY' 2>&1 | tee "$OUT/accelerate_fsdp_check.txt" || status=1
import json, sys
from safetensors.torch import load_file
out, procs = sys.argv[1], int(sys.argv[2])
facts = [json.load(open(f"{out}/rank{r}.json")) for r in range(procs)]
print("distributed_type", {f["distributed_type"] for f in facts}, "steps", {f["global_step"] for f in facts})
saved = load_file(f"{out}/adapter/adapter_model.safetensors")
print("adapter", {k: tuple(v.shape) for k, v in saved.items()})
assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].dim() == 2
assert {f["distributed_type"] for f in facts} == {"DistributedType.FSDP"}
finals = [load_file(f"{out}/prompt_rank{r}.safetensors")["final"] for r in range(procs)]
print("prompt shapes", [tuple(f.shape) for f in finals], "ranks equal", all((f == finals[0]).all() for f in finals))
assert all(f.shape == saved["prompt_embeddings"].shape for f in finals)  # whole (ignored), not a 1-D shard
assert all((f == finals[0]).all() for f in finals) and (finals[0] == saved["prompt_embeddings"]).all()
PY
echo "exit status $status (0 = all passed)"; exit $status
