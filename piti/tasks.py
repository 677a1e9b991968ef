"""The tasks PITI translates from, and the channels of each task's condition encoding (piti.data.conditions)."""

TASK_CHANNELS = {"mask": 3, "sketch": 1, "depth": 6}
TASKS = tuple(TASK_CHANNELS)
