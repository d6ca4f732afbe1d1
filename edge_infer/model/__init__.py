"""The model stage: spec, interpreter backends, quantization, the engine, loading and benchmarking."""
