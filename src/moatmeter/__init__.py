"""moatmeter: predict, measure and price on-premise LLM serving, software moat included."""

__version__ = "0.1.0"
