class BaseFormatDetector:
    """Base of SGLang's tool-call format detectors (in the double they detect nothing)."""

    def __init__(self) -> None:
        self.tool_call_separator = ", "
