"""Post-training building blocks the train layer runs: training objectives and their registry
(objective.py, methods.py, preference_objective.py), LoRA / QLoRA (lora.py, qlora.py, setup.py,
parts.py), PEFT adapter I/O (peft_io.py), preference losses (preference.py), and GRPO-family RL
pieces (rewards.py, rl_loss.py, rl_step.py, rollout.py; the loop is train/grpo_trainer.py).
Config sections: `lora` and `preference` (config.py), `grpo` (grpo_config.py).
"""
