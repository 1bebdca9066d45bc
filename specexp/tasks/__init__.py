"""Tasks: where a dataset's samples come from, how a sample becomes a prompt, when generation
stops, and how outputs are scored."""
from specexp.tasks.base import Sample, Task

__all__ = ["Sample", "Task"]
