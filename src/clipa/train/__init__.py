"""Training: the stage loop, optimizer and schedule (checkpoints are ``clipa.checkpoint``)."""
