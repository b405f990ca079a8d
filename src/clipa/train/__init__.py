"""Training: the stage loop, optimizer and schedule, atomic resumable checkpoints."""
