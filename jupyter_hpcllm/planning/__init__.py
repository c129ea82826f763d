"""Pure planning: model facts (the data type), families and parsers, sizing, engine commands, the sbatch
script, start-up failure diagnosis, and the plan that ties them together. No I/O."""
