#!/usr/bin/env bash
# CONQORD step 2: reward model (causal LM + scalar head, pairwise loss).
#   paper recipe (default): hh-rlhf helpful-base, Llama-2-7B, 4 GPUs, ZeRO-3 + offload, LoRA 128.
#     The authors trained 10 epochs and handed step 3 the epoch-3 checkpoint; we train 3 epochs.
#   CONQORD_PRESET=toy: pairs of true/false answers from the toy world, starting from the step-1 model
#     (the toy base model is random, so a reward model needs the facts SFT taught).
#   CONQORD_PRESET=smollm2: SmolLM2-135M-Instruct on the real-facts world's pairs, CPU (scripts/run_smollm2_pipeline.sh).
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"

if [ "$PRESET" = toy ]; then
  launch step2_reward_model.main \
    --data_path "$TOY_DATA/step2_reward" --data_split 0,10,0 \
    --model_name_or_path "$TOY_OUT/step1" \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --max_seq_len 64 \
    --learning_rate 1e-3 --weight_decay 0.1 --num_train_epochs 2 --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine --num_warmup_steps 0 --seed 1234 \
    --zero_stage 3 --dtype fp32 --lora_dim 0 \
    --output_dir "$TOY_OUT/step2" --enable_tensorboard --tensorboard_path "$TOY_OUT/tensorboard" \
    "$@"
elif [ "$PRESET" = smollm2 ]; then
  # The facts world's answer pairs (gold vs a wrong answer of the same kind; ~200, so 40 steps of 8 are
  # ~1.6 epochs), nothing from outside the clone; its held-out pairs give the pair accuracy.
  launch step2_reward_model.main \
    --data_path "$SMOL_DATA/step2_facts" --data_split 0,10,0 \
    --model_name_or_path "$SMOL_BASE" \
    --per_device_train_batch_size 8 --per_device_eval_batch_size 16 --max_seq_len 96 \
    --learning_rate 1e-4 --weight_decay 0.1 --max_steps 40 --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine --num_warmup_steps 0 --seed 1234 \
    --zero_stage 0 --dtype fp32 --lora_dim 16 --lora_module_name "layers." --only_optimize_lora \
    --lora_learning_rate 1e-3 --eval_interval 20 \
    --output_dir "$SMOL_OUT/step2" --enable_tensorboard --tensorboard_path "$SMOL_OUT/tensorboard" \
    "$@"
else
  launch step2_reward_model.main \
    --data_path "${CONQORD_STEP2_DATA:-datasets/conqord_step2_data}" --data_split 0,10,0 \
    --model_name_or_path "${CONQORD_BASE_MODEL:-model_pth/llama2_hf_7b}" \
    --per_device_train_batch_size 32 --per_device_eval_batch_size 32 --max_seq_len 512 \
    --learning_rate 5e-5 --weight_decay 0.1 --num_padding_at_beginning 0 --num_train_epochs 3 \
    --gradient_accumulation_steps 16 --lr_scheduler_type cosine --num_warmup_steps 0 --seed 1234 \
    --gradient_checkpointing --zero_stage 3 --deepspeed --offload --dtype bf16 \
    --lora_dim 128 --lora_module_name "layers." \
    --output_dir "${CONQORD_OUT:-model_pth/paper}/step2" \
    --enable_tensorboard --tensorboard_path "${CONQORD_OUT:-model_pth/paper}/tensorboard" \
    "$@"
fi
