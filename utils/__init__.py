"""Shared package of the CONQORD pipeline: flags, DeepSpeed config, LoRA, models, data, rewards."""
