"""The run engine: from a due run to every recipient's recorded outcome."""
