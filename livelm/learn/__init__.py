"""Live learning: feedback, memory, copying, the learner, adapter updates and store, probes, RL."""
