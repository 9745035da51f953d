"""Lightning training wiring. Deliberately empty, so ``training.metrics`` imports without Lightning."""
