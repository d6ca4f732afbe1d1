"""The decision stage: the model's answer or a fallback, always with a reason."""
