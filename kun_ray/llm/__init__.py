"""The LLM stages: tasks (prompt builders and parsers, pure Python) and the engine that runs them."""
