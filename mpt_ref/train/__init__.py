"""The MPT method end to end on a NumPy training loop (spec/training.md): a frozen base model, losses,
optimizers, synthetic multitask data, source training (teachers + distilled multitask prompt) and
target adaptation from each PEFT init. Hand-written gradients throughout."""
