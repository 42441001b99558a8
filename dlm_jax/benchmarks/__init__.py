"""Speed measurements behind `python -m launch.bench`: training and sampling throughput, sequence-length scaling, and
EcoHybrid's hot-path analysis. They drive the trainer's own step, so they sit above `training` (nothing imports
them)."""
