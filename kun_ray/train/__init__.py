"""Fine-tuning the label, chat and final models on Ray Train (Humpback and Kun)."""
