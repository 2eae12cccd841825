"""Fine-tuning configs (`configs/finetune/glue.py:TASK`)."""
