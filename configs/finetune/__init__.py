"""Fine-tuning configs: glue.py:TASK, squad.py[:v2], ner.py; common.py holds the recipe."""
