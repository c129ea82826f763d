"""sglang.srt.parser: the reasoning parser and the chat-template detection (newer SGLang)."""
