"""Lab tools over replays: the HTML report, model-to-model comparison, and ``eval`` over a corpus (:mod:`.eval`)."""
