"""Training: LoRA policy (policy.py), the clipped objective (loss.py), batching, the trainer
loop (trainer.py), checkpoints and run logs. Heavy modules are imported on use."""
