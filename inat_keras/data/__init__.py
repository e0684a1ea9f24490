"""From image folders to batches: where images come from (sources, synthetic), which go where (splits),
and how they are decoded, cached, shuffled and augmented (cache, pipeline, augment). Imports only config."""
