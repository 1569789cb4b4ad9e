"""The assistant: conversations, runs over OpenAI-compatible providers, tools and prompts."""
