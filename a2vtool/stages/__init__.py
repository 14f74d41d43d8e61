"""Stages: each is `run(config) -> manifest/summary`; they talk to each other only through artifacts on disk."""

# stage name -> "module:ConfigModel"; used by the CLI and by the test that validates every file in configs/
CONFIGS = {
    "embed": "a2vtool.stages.embed:EmbedConfig",
    "federate": "a2vtool.federated.config:FederateConfig",
    "train-generator": "a2vtool.stages.train_generator:TrainGeneratorConfig",
    "generate-images": "a2vtool.imaging.config:GenerateConfig",
    "memcheck": "a2vtool.stages.memcheck:MemcheckConfig",
}


def config_model(stage: str) -> type:
    import importlib

    mod, _, name = CONFIGS[stage].partition(":")
    return getattr(importlib.import_module(mod), name)
