"""The MPT method end to end on a NumPy training loop (spec/training.md): a frozen base model, losses,
optimizers, a seeded family of related tasks (data), the source stage (teachers, a multitask prompt,
MPT with and without distillation), the compared target methods, the few-shot experiment over
replicates, its statistics (95 % t-intervals, paired contrasts), report and optional plot.
Hand-written gradients throughout."""
