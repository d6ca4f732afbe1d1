"""Meeting each window's deadline: the scheduler, its modes, the start-up check, silence, OS hygiene."""
