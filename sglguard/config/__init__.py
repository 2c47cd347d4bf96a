"""The YAML catalog: models (`config.models`), loader (`config.loader`), the example catalog."""
