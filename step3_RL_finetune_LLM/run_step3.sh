#!/usr/bin/env bash
# CONQORD step 3: PPO with the dual reward R = clip(r + alpha * R_A).
#   paper recipe (default): the authors' flags (actor/critic LoRA 64, lr 1e-6, 4 GPUs, ZeRO-3, alpha 0.5).
#     With their per-device generation batch of 1, R_A was zero on every device; our default
#     --align_reward_scope global orders the rollouts of all ranks (4 here). Raise
#     --per_device_generation_batch_size for a meaningful R_A. The Hybrid Engine is left off: rollouts
#     gather the ZeRO-3 weights once and generate without it (it is reported broken for Llama-2).
#   CONQORD_PRESET=toy: the toy world on CPU, exact-match correctness as the quality reward.
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"

if [ "$PRESET" = toy ]; then
  launch step3_RL_finetune_LLM.main \
    --data_path "$TOY_DATA/step3_ppo" --data_split 0,0,10 \
    --actor_model_name_or_path "$TOY_OUT/step1" --critic_model_name_or_path "$TOY_OUT/step2" \
    --quality_reward oracle --alpha 2.0 --align_reward_reduction mean --align_reward_scope global \
    --per_device_generation_batch_size 64 --per_device_training_batch_size 32 --generation_batches 1 \
    --ppo_epochs 1 --max_prompt_seq_len 32 --max_answer_seq_len 12 --max_steps 500 \
    --actor_learning_rate 1e-4 --critic_learning_rate 3e-4 --freezing_actor_steps 50 \
    --actor_weight_decay 0. --critic_weight_decay 0. --lr_scheduler_type constant --num_warmup_steps 0 \
    --temperature 1.0 --top_p 1.0 --kl_ctl 0.1 --seed 1234 --disable_actor_dropout \
    --actor_zero_stage 3 --critic_zero_stage 3 --dtype fp32 --actor_lora_dim 0 --critic_lora_dim 0 \
    --log_interval 50 --save_interval 250 \
    --output_dir "$TOY_OUT/step3" --enable_tensorboard --tensorboard_path "$TOY_OUT/tensorboard" \
    "$@"
elif [ "$PRESET" = smollm2 ]; then
  # PPO on the facts world's PPO pool; quality from the step-2 reward model (the paper's setting; --quality_reward
  # oracle: exact match). Rollouts at T = 0.7: at T = 1 SmolLM2 gets 15 % of the capitals right, greedy 40 %.
  # One CPU process: ZeRO stage 0 (ZeRO-3 partitions nothing here and costs ~1.6x per step, measured).
  # CONQORD_SMOLLM2_PROFILE=long: the stronger profile (80 PPO steps a run instead of 20), <= 3 h for the pipeline.
  steps=20
  [ "${CONQORD_SMOLLM2_PROFILE:-}" = long ] && steps=80  # ~2 h 40 min for the six runs + step 4, by this run's s/step
  launch step3_RL_finetune_LLM.main \
    --data_path "$SMOL_DATA/step3_ppo" --data_split 0,0,10 \
    --actor_model_name_or_path "$SMOL_OUT/step1" --critic_model_name_or_path "$SMOL_OUT/step2" \
    --quality_reward model --alpha 0.5 --align_reward_reduction mean --align_reward_scope global \
    --per_device_generation_batch_size 16 --per_device_training_batch_size 16 --generation_batches 1 \
    --ppo_epochs 1 --max_prompt_seq_len 48 --max_answer_seq_len 16 --max_steps "$steps" \
    --actor_learning_rate 1e-5 --critic_learning_rate 1e-5 --freezing_actor_steps 0 \
    --actor_weight_decay 0. --critic_weight_decay 0. --lr_scheduler_type constant --num_warmup_steps 0 \
    --temperature 0.7 --top_p 1.0 --kl_ctl 0.1 --seed 1234 --disable_actor_dropout \
    --actor_zero_stage 0 --critic_zero_stage 0 --dtype fp32 \
    --actor_lora_dim 16 --critic_lora_dim 16 --actor_lora_module_name "layers." --critic_lora_module_name "layers." \
    --actor_lora_learning_rate 5e-4 --critic_lora_learning_rate 5e-4 --only_optimize_lora \
    --log_interval 5 --save_interval 0 \
    --output_dir "$SMOL_OUT/step3" --enable_tensorboard --tensorboard_path "$SMOL_OUT/tensorboard" \
    "$@"
else
  OUT="${CONQORD_OUT:-model_pth/paper}"
  launch step3_RL_finetune_LLM.main \
    --data_path "${CONQORD_STEP3_DATA:-datasets/conqord_step3_data}" --data_split 0,0,10 \
    --actor_model_name_or_path "$OUT/step1" --critic_model_name_or_path "$OUT/step2" \
    --num_padding_at_beginning 1 --alpha 0.5 --quality_reward model \
    --per_device_generation_batch_size 1 --per_device_training_batch_size 1 --generation_batches 1 \
    --ppo_epochs 1 --max_answer_seq_len 256 --max_prompt_seq_len 256 \
    --actor_learning_rate 1e-6 --critic_learning_rate 1e-6 --actor_weight_decay 0.1 --critic_weight_decay 0.1 \
    --num_train_epochs 1 --lr_scheduler_type constant --gradient_accumulation_steps 32 \
    --actor_gradient_checkpointing --critic_gradient_checkpointing --offload_reference_model \
    --disable_actor_dropout --num_warmup_steps 0 --deepspeed --seed 1234 \
    --actor_zero_stage 3 --critic_zero_stage 3 --dtype bf16 \
    --actor_lora_dim 64 --critic_lora_dim 64 --actor_lora_module_name "layers." --critic_lora_module_name "layers." \
    --save_interval 100 --output_dir "$OUT/step3" --enable_tensorboard --tensorboard_path "$OUT/tensorboard" \
    "$@"
fi
