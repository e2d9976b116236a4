#!/usr/bin/env bash
# CONQORD step 1: supervised fine-tuning with confidence in the answers.
#   paper recipe (default): Llama-2-7B, 4 GPUs, ZeRO-3, LoRA 128 — the authors' flags.
#   CONQORD_PRESET=toy: the embedded toy world on CPU (python datasets/generate_toy_world.py first).
#   CONQORD_PRESET=smollm2: SmolLM2-135M-Instruct on the real-facts world, CPU (scripts/run_smollm2_pipeline.sh).
# Extra flags are passed through and override the defaults: bash run_step1.sh --learning_rate 5e-5
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"

if [ "$PRESET" = toy ]; then
  # The toy base model is randomly initialised, so SFT trains all weights (--lora_dim 0).
  launch step1_supervised_finetuning_LM.main \
    --data_path "$TOY_DATA/step1_sft" --data_split 10,0,0 \
    --model_name_or_path "$TOY_BASE" \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --max_seq_len 96 \
    --learning_rate 3e-3 --weight_decay 0. --num_train_epochs 3 --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine --num_warmup_steps 20 --seed 1234 \
    --zero_stage 3 --dtype fp32 --lora_dim 0 \
    --output_dir "$TOY_OUT/step1" --enable_tensorboard --tensorboard_path "$TOY_OUT/tensorboard" \
    "$@"
elif [ "$PRESET" = smollm2 ]; then
  # SmolLM2-135M-Instruct learns the answer/confidence format from the facts world's gold answers (435 rows:
  # 60 steps of 16 are ~2 epochs); LoRA, ZeRO-3, CPU.
  launch step1_supervised_finetuning_LM.main \
    --data_path "$SMOL_DATA/step1_sft" --data_split 10,0,0 \
    --model_name_or_path "$SMOL_BASE" \
    --per_device_train_batch_size 16 --per_device_eval_batch_size 32 --max_seq_len 64 \
    --learning_rate 1e-4 --weight_decay 0. --max_steps 60 --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine --num_warmup_steps 5 --seed 1234 \
    --zero_stage 0 --dtype fp32 --lora_dim 16 --lora_module_name "layers." --only_optimize_lora \
    --lora_learning_rate 1e-3 --eval_interval 30 \
    --output_dir "$SMOL_OUT/step1" --enable_tensorboard --tensorboard_path "$SMOL_OUT/tensorboard" \
    "$@"
else
  launch step1_supervised_finetuning_LM.main \
    --data_path "${CONQORD_STEP1_DATA:-datasets/conqord_step1_data}" --data_split 10,0,0 \
    --model_name_or_path "${CONQORD_BASE_MODEL:-model_pth/llama2_hf_7b}" \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 32 --max_seq_len 512 \
    --learning_rate 1e-4 --weight_decay 0. --num_train_epochs 3 --gradient_accumulation_steps 64 \
    --lr_scheduler_type cosine --num_warmup_steps 5 --seed 1234 --gradient_checkpointing \
    --zero_stage 3 --deepspeed --dtype bf16 --lora_dim 128 --lora_module_name "layers." \
    --output_dir "${CONQORD_OUT:-model_pth/paper}/step1" --print_loss \
    --enable_tensorboard --tensorboard_path "${CONQORD_OUT:-model_pth/paper}/tensorboard" \
    "$@"
fi
