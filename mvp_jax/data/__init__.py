"""Data: tokenisation, GLUE / SQuAD / local files / offline sets, batching.

Entry points: ``tokenization.load_tokenizer``, ``tasks.build_task``, ``batching.BatchIterator``,
``batching.eval_batches``, ``config.default_data_config``. Imports nothing of pruning or models.
"""
