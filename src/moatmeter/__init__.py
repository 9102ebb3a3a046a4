"""moatmeter: predict, measure and price on-premise LLM serving, with the software moat in the numbers."""

__version__ = "0.1.0"
