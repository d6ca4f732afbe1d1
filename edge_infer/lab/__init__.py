"""Lab tools over replays: the HTML report and model-to-model comparison."""
