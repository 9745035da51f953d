"""One Dataset per on-disk corpus layout (CROHME, IAM, LibriSpeech), for real and synthetic data alike."""
