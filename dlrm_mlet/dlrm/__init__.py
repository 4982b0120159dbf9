"""The facebookresearch/dlrm integration: options, tables, data, checkpoints, resume, distributed."""
